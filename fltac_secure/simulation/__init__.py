"""The whole federation in one process: FL-TAC and its baselines on the same harness.

``simulate(plan, data, method, out_dir)`` runs FL-TAC (``fltac``), FL-TAC with
true task ids (``oracle``), one shared adapter (``fedit``, ``fedit-tagged``,
``fedit-taskheads``: see ``simulation.fedit``), local training
only (``local``) or pooled data (``central``) with the round functions of
``fltac_secure.federation.rounds`` that the networked roles use too.
"""

from fltac_secure.simulation.context import SimContext
from fltac_secure.simulation.methods import Method
from fltac_secure.simulation.registry import METHODS, register_method
from fltac_secure.simulation.runner import SimulationResult, simulate

__all__ = ["METHODS", "Method", "SimContext", "SimulationResult", "register_method", "simulate"]
