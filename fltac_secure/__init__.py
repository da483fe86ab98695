"""fltac_secure: privacy-hardened federated fine-tuning with FL-TAC.

Layers (imports only point downwards):
    cli -> roles (aggregator/, collaborator/) -> federation -> transport, pki, plan
    -> learning, privacy, data (pure: arrays in, arrays out, no sockets or files).
"""

__version__ = "0.1.0"
