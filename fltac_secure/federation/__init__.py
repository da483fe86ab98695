"""Federation logic above the pure algorithms: round functions, wire ledger and audit.

``rounds`` holds one FL-TAC round as functions (client training + sketching,
server clustering + aggregation) that the simulator and the networked roles
both call.
"""
