"""One root exception for the project; every error carries the CLI exit code.

Exit codes: 0 success, 2 bad usage or invalid input (plans, site files,
certificate requests, data files), 1 any other failure (refused connection,
I/O, a failed round).  Messages say what was wrong and what to do.
"""

from __future__ import annotations


class FltacError(Exception):
    """Root of all fltac_secure errors. ``exit_code`` is what the CLI returns."""

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(FltacError, ValueError):
    """Invalid plan, site file or option. ``problems`` has one line per issue."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class DataError(FltacError, ValueError):
    """A data file is missing, malformed or does not match the plan's tasks."""

    exit_code = 2


class PKIError(FltacError, ValueError):
    """A certificate, key, CSR or CA operation was refused."""

    exit_code = 2


class TransportError(FltacError, ConnectionError):
    """A connection failed or was refused; ``reason`` is a machine-readable code."""

    exit_code = 1

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class ProtocolError(FltacError, ValueError):
    """A message from the network was refused by strict decoding."""

    exit_code = 1

    def __init__(self, message: str, reason: str = "bad_message") -> None:
        super().__init__(message)
        self.reason = reason


class PrivacyError(FltacError, ValueError):
    """A DP setting or privacy ledger is invalid or inconsistent with the plan."""

    exit_code = 2


class BudgetExhausted(FltacError):
    """A task slot's privacy budget would be exceeded by another round."""

    exit_code = 1


class StateError(FltacError, RuntimeError):
    """A workspace or checkpoint is missing, corrupt or from another plan."""

    exit_code = 1


class SecAggError(FltacError, ValueError):
    """Secure aggregation refused a message or could not complete; ``reason`` is a machine-readable code.

    Raised for every failed check (a bad signature, a share that does not
    decrypt, a request that breaks the one-share rule, a stage out of order):
    the caller ends that party's part in the round, never carries on.
    """

    exit_code = 1

    def __init__(self, message: str, reason: str = "secagg") -> None:
        super().__init__(message)
        self.reason = reason


class CompressionError(FltacError, ValueError):
    """A quantised update is malformed (lengths, scales or values out of range) or a setting is impossible."""

    exit_code = 1
