"""The privacy ledger: a site's DP spending per task slot, persisted in its workspace.

``<workspace>/state/privacy.json`` holds, for each task slot, its data size,
its accountant history and one entry per round (steps, sample rate, noise,
clipping norm, epsilon spent so far at the plan's delta), plus a record when
the slot stopped on its budget.

Threat answered: a restart (crash, operator, attacker-induced) that silently
resets the spent epsilon, letting a site release more than its budget.  So the
ledger is reloaded on start and *validated*: a ledger for another plan, delta,
accountant or data size is refused with a PrivacyError, never reset; epsilons
are recomputed from the history and must match what was recorded.  Writes are
atomic (temp file, fsync, rename, fsync of the folder), and a round is charged
*before* it trains, so a crash mid-round over-counts rather than under-counts.

``PrivacyLedger.in_memory`` is the simulator's and the tests' ledger: nothing
is written (``persistent`` is False), and the networked roles refuse it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fltac_secure.atomic import atomic_write_text
from fltac_secure.errors import PrivacyError
from fltac_secure.privacy.accounting import ACCOUNTANTS, SlotAccountant

LEDGER_FORMAT = "fltac-privacy-ledger/1"
LEDGER_FILE = Path("state") / "privacy.json"
_REL_TOL = 1e-9


def ledger_path(workspace: str | Path) -> Path:
    """Where a workspace keeps its privacy ledger."""
    return Path(workspace) / LEDGER_FILE


@dataclass
class RoundEntry:
    """One charged round of one slot."""

    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    epsilon: float
    """Epsilon spent so far (this round included) at the ledger's delta."""


@dataclass
class SlotRecord:
    """Everything the ledger knows about one task slot."""

    data_size: int
    target_epsilon: float | None
    accountant: SlotAccountant
    rounds: list[RoundEntry] = field(default_factory=list)
    stopped: dict[str, Any] | None = None
    """Set when the slot stopped on its budget: round, epsilon, next_epsilon, target_epsilon."""

    @property
    def epsilon(self) -> float:
        return self.rounds[-1].epsilon if self.rounds else 0.0


class PrivacyLedger:
    """Per-slot DP spending of one site under one plan (see module doc)."""

    def __init__(self, *, plan_hash: str, delta: float, accountant: str, path: Path | None = None) -> None:
        if accountant not in ACCOUNTANTS:
            raise PrivacyError(f"privacy.accountant = {accountant!r} is unknown; use one of {sorted(ACCOUNTANTS)}")
        self.plan_hash = plan_hash
        self.delta = float(delta)
        self.accountant = accountant
        self.path = path
        self.slots: dict[str, SlotRecord] = {}

    # opening -----------------------------------------------------------------
    @classmethod
    def in_memory(cls, *, delta: float, accountant: str, plan_hash: str = "in-memory") -> PrivacyLedger:
        """A ledger kept in memory only: NOT persistent, its spending dies with the process.

        For the simulator and tests; the networked roles refuse it (``persistent``).
        """
        return cls(plan_hash=plan_hash, delta=delta, accountant=accountant, path=None)

    @property
    def persistent(self) -> bool:
        """Whether every charge is written to a file (``open``), so a restart resumes it."""
        return self.path is not None

    @classmethod
    def open(cls, workspace: str | Path, *, plan_hash: str, delta: float, accountant: str) -> PrivacyLedger:
        """Load the workspace's ledger (validated against the plan) or start an empty one."""
        path = ledger_path(workspace)
        if not path.exists():
            return cls(plan_hash=plan_hash, delta=delta, accountant=accountant, path=path)
        ledger = cls.from_json(read_ledger_json(path), path=path)
        ledger.check_matches(plan_hash=plan_hash, delta=delta, accountant=accountant)
        return ledger

    def check_matches(self, *, plan_hash: str, delta: float, accountant: str) -> None:
        """Refuse to continue a ledger written under other settings (never reset it)."""
        where = f"privacy ledger {self.path}" if self.path else "privacy ledger"
        if self.plan_hash != plan_hash:
            raise PrivacyError(
                f"{where} was written under plan {self.plan_hash[:12]}..., not this plan {plan_hash[:12]}...; "
                "run with the plan it was written for, or move the ledger away deliberately (its spent "
                "epsilon then no longer protects that data)")
        if self.delta != float(delta):
            raise PrivacyError(f"{where} uses privacy.delta = {self.delta:g}, the plan says {delta:g}; "
                               "a ledger cannot change delta - use the original privacy.delta")
        if self.accountant != accountant:
            raise PrivacyError(f"{where} uses privacy.accountant = {self.accountant!r}, the plan says "
                               f"{accountant!r}; use the original accountant")

    # slots ---------------------------------------------------------------------
    def slot(self, name: str, *, data_size: int, target_epsilon: float | None) -> SlotRecord:
        """The record of slot ``name``, created on first use; refuses a changed data size or budget."""
        rec = self.slots.get(name)
        if rec is None:
            rec = SlotRecord(data_size=data_size, target_epsilon=target_epsilon,
                             accountant=SlotAccountant(self.accountant))
            self.slots[name] = rec
            return rec
        if rec.data_size != data_size:
            raise PrivacyError(
                f"privacy ledger: slot {name!r} was accounted with {rec.data_size} examples, now it has "
                f"{data_size}; the sample rate (and the guarantee) depend on n - restore the original data "
                "or start a new workspace")
        if rec.target_epsilon != target_epsilon:
            raise PrivacyError(f"privacy ledger: slot {name!r} has budget {rec.target_epsilon}, the plan "
                               f"says privacy.target_epsilon = {target_epsilon}; use the original budget")
        return rec

    def charge(self, name: str, entry: RoundEntry, accountant: SlotAccountant) -> None:
        """Record a round (already composed into ``accountant``) and persist."""
        rec = self.slots[name]
        rec.accountant = SlotAccountant(accountant.mechanism, accountant.history)
        rec.rounds.append(entry)
        self.save()

    def stop(self, name: str, *, round: int, epsilon: float, next_epsilon: float) -> None:
        """Record that slot ``name`` stopped on its budget before ``round`` and persist."""
        rec = self.slots[name]
        rec.stopped = {"round": round, "epsilon": epsilon, "next_epsilon": next_epsilon,
                       "target_epsilon": rec.target_epsilon}
        self.save()

    def epsilons(self) -> dict[str, float]:
        """Epsilon spent so far per slot (slots in name order)."""
        return {name: r.epsilon for name, r in sorted(self.slots.items())}

    def summary(self) -> dict[str, Any]:
        """What a report shows: per slot its rounds, final epsilon, budget left and status."""
        slots = {}
        for name, r in sorted(self.slots.items()):
            left = None if r.target_epsilon is None else r.target_epsilon - r.epsilon
            slots[name] = {"data_size": r.data_size, "epsilon": r.epsilon, "target_epsilon": r.target_epsilon,
                           "budget_left": left, "steps": r.accountant.steps,
                           "status": "stopped on budget" if r.stopped else "active",
                           "stopped": r.stopped, "rounds": [asdict(e) for e in r.rounds]}
        return {"delta": self.delta, "accountant": self.accountant, "plan_hash": self.plan_hash, "slots": slots}

    # serialisation -------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT, "plan_hash": self.plan_hash, "delta": self.delta,
            "accountant": self.accountant,
            "slots": {name: {"data_size": r.data_size, "target_epsilon": r.target_epsilon,
                             "accountant": r.accountant.to_json(),
                             "rounds": [asdict(e) for e in r.rounds], "stopped": r.stopped}
                      for name, r in sorted(self.slots.items())},
        }

    @classmethod
    def from_json(cls, data: Any, *, path: Path | None = None) -> PrivacyLedger:
        """Rebuild a ledger, validating its structure and recomputing every slot's epsilon."""
        where = f"privacy ledger {path}" if path else "privacy ledger"
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise PrivacyError(f"{where} is not a {LEDGER_FORMAT} file; restore it from a backup")
        try:
            ledger = cls(plan_hash=str(data["plan_hash"]), delta=float(data["delta"]),
                         accountant=str(data["accountant"]), path=path)
            for name, raw in data["slots"].items():
                ledger.slots[name] = _slot_from_json(raw, ledger.delta, f"{where}, slot {name!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, PrivacyError):
                raise
            raise PrivacyError(f"{where} is malformed ({type(exc).__name__}: {exc}); restore it from a backup") from exc
        return ledger

    def save(self) -> None:
        """Write atomically to ``self.path`` (no-op for an in-memory ledger)."""
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")


def _slot_from_json(raw: dict[str, Any], delta: float, where: str) -> SlotRecord:
    acc = SlotAccountant.from_json(raw["accountant"])
    rounds = [RoundEntry(**e) for e in raw["rounds"]]
    rec = SlotRecord(data_size=int(raw["data_size"]), target_epsilon=raw["target_epsilon"], accountant=acc,
                     rounds=rounds, stopped=raw["stopped"])
    charged = sum(e.steps for e in rounds)
    if charged != acc.steps:
        raise PrivacyError(f"{where}: rounds charge {charged} steps but the accountant holds {acc.steps}; "
                           "the ledger is inconsistent - restore it from a backup")
    if rounds:
        recomputed = acc.epsilon(delta)
        if not math.isclose(recomputed, rounds[-1].epsilon, rel_tol=_REL_TOL, abs_tol=1e-12):
            raise PrivacyError(f"{where}: recorded epsilon {rounds[-1].epsilon} but its history gives "
                               f"{recomputed}; the ledger was edited or corrupted - restore it from a backup")
    return rec


def read_ledger_json(path: str | Path) -> dict[str, Any]:
    """The raw JSON of a ledger file, with a clear error when it is missing or unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PrivacyError(f"no privacy ledger at {path}; DP was never used in this workspace") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise PrivacyError(f"cannot read privacy ledger {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise PrivacyError(f"privacy ledger {path} is not a JSON object")
    return data


def load_ledger(workspace: str | Path) -> PrivacyLedger:
    """A workspace's ledger, validated in itself (for reports; no plan needed)."""
    path = ledger_path(workspace)
    return PrivacyLedger.from_json(read_ledger_json(path), path=path)
