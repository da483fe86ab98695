"""The aggregator's workspace: verified round checkpoints under ``state/``, the last two kept.

Files (every one written atomically through ``fltac_secure.atomic``)::

    state/server-<round>.safetensors  the ServerState arrays: slot vectors, cluster vectors, labels, centroids
    state/checkpoint.json             the newest checkpoint: round, plan hash, members and their slot
                                      counts, task names (if shared), label counts per slot (with
                                      compression.trim_head), history, ledger position, the name and
                                      SHA-256 of its tensor file, and ``sha256`` over all of that
    state/checkpoint.prev.json        the checkpoint before it (same format, its own tensor file)

One commit point.  ``save`` verifies the current ``checkpoint.json``, writes
the new tensor file, copies the verified current JSON to
``checkpoint.prev.json``, then replaces ``checkpoint.json`` (one atomic rename)
and only then deletes tensor files neither JSON names.  The rename commits:
before it the previous checkpoint is in force (at worst ``checkpoint.prev.json``
is already a copy of it), after it the new one.  The digest lives inside the
file that commits and covers the tensor file through its hash, so there is no
moment when a committed checkpoint and its digest disagree.  Nothing is pickled.

Verification on load: ``sha256`` must equal the SHA-256 of the canonical JSON
(sorted keys, no whitespace) of the file's other fields, the tensor file's
bytes must match ``tensors_sha256``, and the values must be ones this plan can
produce (``aggregator/checkpoint_values.py``).  Threat answered: disk damage,
flipped bytes, truncation, hand edits (a sample count changed, a site
removed).  Not answered: someone who can write ``state/`` can also recompute a
plain SHA-256; that would need a key kept outside the workspace.

Fallback, automatic and loud: when ``checkpoint.json`` fails verification (or
is missing) and ``checkpoint.prev.json`` passes, ``load`` resumes from the
previous one and logs an error line naming the refused file and why.  This is
safe: the previous checkpoint is a consistent state one round earlier, written
and verified by the same code; that round runs again with the same seeds.
Sites still holding its results in their round cache answer from it, sites
that moved on retrain it deterministically (under DP that round is charged
again: the privacy ledger over-counts, never under-counts).  The refused file
is left in place for inspection and is never rotated into
``checkpoint.prev.json``; the next save replaces it.  A checkpoint of another
plan, or of another format version, is a configuration error, not damage: it
is refused at once, with no fallback.  When no checkpoint passes, StateError
names each file, why it was refused, and the fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.checkpoint_values import PlanFacts, checkpoint_problems
from fltac_secure.atomic import atomic_write_bytes, remove_stale_temps
from fltac_secure.errors import StateError
from fltac_secure.federation.console import EventLog
from fltac_secure.federation.ledger import LEDGER_NAME
from fltac_secure.federation.rounds import ServerState
from fltac_secure.federation.storage import decode_tensors, encode_tensors, write_json
from fltac_secure.plan import Plan

FORMAT = "fltac-aggregator-checkpoint/2"
OLD_FORMATS = ("fltac-aggregator-checkpoint/1",)
STATE_DIR = "state"
CHECKPOINT = "checkpoint.json"
PREVIOUS = "checkpoint.prev.json"
DIGEST = "sha256"
TENSOR_NAME = re.compile(r"server-\d{6,}\.safetensors")
FIX = "restore state/ from a backup, or move state/ aside to run the federation again from round 0"


class Damaged(StateError):
    """A checkpoint failed verification (missing, corrupt, edited): the previous one may stand in."""


def _read(path: Path, what: str) -> bytes:
    """The bytes of a checkpoint file; ``Damaged`` naming ``what`` if it is missing or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise Damaged(f"{what} is missing") from None
    except OSError as exc:
        raise Damaged(f"{what} is unreadable ({exc})") from None


@dataclass
class Checkpoint:
    """What the aggregator needs to resume: the algorithm's state and who holds which slots."""

    state: ServerState
    members: dict[str, list[int]] = field(default_factory=dict)  # site -> sample count per slot
    tasks: dict[str, list[str]] = field(default_factory=dict)  # only when the plan shares task names
    history: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, list[int]] = field(default_factory=dict)  # compression.trim_head: label count per slot


def canonical_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``body`` as canonical JSON: sorted keys, no whitespace, ASCII."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class CheckpointStore:
    """Reads and writes the verified checkpoints of one workspace for one plan.

    ``vector_size`` is the plan's adapter size; ``log`` gets the fallback and
    clean-up lines (the aggregator passes its event log).
    """

    def __init__(self, workspace: Path, plan_hash: str, plan: Plan, *, vector_size: int,
                 log: EventLog | None = None) -> None:
        self.workspace = Path(workspace)
        self.dir = self.workspace / STATE_DIR
        self.plan_hash = plan_hash
        self.facts = PlanFacts.of(plan, vector_size)
        self.log = log or EventLog("aggregator")
        self.loaded_from: Path | None = None  # the file the last ``load`` used

    @property
    def exists(self) -> bool:
        return (self.dir / CHECKPOINT).is_file() or (self.dir / PREVIOUS).is_file()

    def remove_stale_temps(self) -> int:
        """Delete temp files that killed atomic writes left in ``state/`` (call at start); returns how many."""
        removed = remove_stale_temps(self.dir)
        if removed:
            self.log.warn(f"removed {len(removed)} stale temp file(s) left in {self.dir} by interrupted writes")
        return len(removed)

    # -- save ----------------------------------------------------------------------
    def save(self, ckpt: Checkpoint) -> Path:
        """Write ``ckpt`` as the newest checkpoint; the one it replaces becomes the previous one."""
        r = ckpt.state.round
        problems = checkpoint_problems(ckpt.state, ckpt.members, ckpt.tasks, self.facts, ckpt.labels)
        if problems:
            raise StateError(f"refusing to write a checkpoint of round {r} that would not load: {'; '.join(problems)}. "
                             f"This is a bug in the aggregator; the last good checkpoint in {self.dir} is intact")
        self.dir.mkdir(parents=True, exist_ok=True)
        keep = self._rotation(r)
        name = f"server-{r:06d}.safetensors"
        raw = encode_tensors(ckpt.state.to_tensors(), {"plan_hash": self.plan_hash})
        atomic_write_bytes(self.dir / name, raw)
        if keep is not None:
            atomic_write_bytes(self.dir / PREVIOUS, keep)
        ledger = self.workspace / LEDGER_NAME
        # through a JSON round trip, so that the digest covers exactly what load will read
        body = json.loads(json.dumps({
            "format": FORMAT, "plan_hash": self.plan_hash, "round": r,
            "tensors": name, "tensors_sha256": hashlib.sha256(raw).hexdigest(),
            "members": ckpt.members, "tasks": ckpt.tasks, "history": ckpt.history, "labels": ckpt.labels,
            "ledger_bytes": ledger.stat().st_size if ledger.exists() else 0,
        }))  # fmt: skip
        write_json(self.dir / CHECKPOINT, {**body, DIGEST: canonical_digest(body)})
        self._remove_unreferenced({name, self._tensor_name_of(self.dir / PREVIOUS)})
        return self.dir / CHECKPOINT

    def _rotation(self, new_round: int) -> bytes | None:
        """The current JSON's bytes if it should become the previous checkpoint: it verifies and is older."""
        current = self.dir / CHECKPOINT
        if not current.is_file():
            return None
        try:
            old = self._read(current)
        except StateError as exc:
            self.log.warn(f"not keeping {current} as the previous checkpoint: {exc}")
            return None
        if old.state.round >= new_round:
            # the same round saved again: it replaces the current one (whose tensor file it overwrites
            # first: a crash before the commit leaves the current one refused and the previous one in force)
            return None
        return current.read_bytes()

    def _tensor_name_of(self, path: Path) -> str | None:
        try:
            name = json.loads(path.read_bytes()).get("tensors")
        except (OSError, ValueError, AttributeError):
            return None
        return name if isinstance(name, str) else None

    def _remove_unreferenced(self, keep: set[str | None]) -> None:
        for old in self.dir.glob("server-*.safetensors"):
            if TENSOR_NAME.fullmatch(old.name) and old.name not in keep:
                old.unlink(missing_ok=True)

    # -- load ------------------------------------------------------------------------
    def load(self) -> Checkpoint:
        """The newest checkpoint that verifies; falls back to the previous one loudly; else StateError."""
        refused: list[str] = []
        for path in (self.dir / CHECKPOINT, self.dir / PREVIOUS):
            try:
                ckpt = self._read(path)
            except Damaged as exc:
                refused.append(str(exc))
                continue
            if refused:
                r = ckpt.state.round
                self.log.error(f"CHECKPOINT REFUSED: {refused[0]}. Resuming from the previous checkpoint {path} "
                               f"instead (at round {r}: round {r} runs again, with the same seeds). "
                               f"The refused file stays for inspection until the next checkpoint replaces it")
            self.loaded_from = path
            return ckpt
        reasons = "\n".join(f"  - {why}" for why in refused)
        raise StateError(f"no aggregator checkpoint in {self.dir} passes verification:\n{reasons}\nFix: {FIX}")

    def _read(self, path: Path) -> Checkpoint:
        """One checkpoint, verified: Damaged for damage, StateError for another plan or format."""
        meta = self._verified_json(path)
        name = meta.get("tensors")
        if not isinstance(name, str) or not TENSOR_NAME.fullmatch(name):
            raise Damaged(f"{path} names no valid tensor file ({name!r:.60})")
        tensor_path = self.dir / name
        raw = _read(tensor_path, f"{tensor_path}, named by {path},")
        if hashlib.sha256(raw).hexdigest() != meta.get("tensors_sha256"):
            raise Damaged(f"{tensor_path} fails the SHA-256 check recorded in {path}: it changed after it was "
                          "written (disk damage, truncation or an edit)")
        try:
            state = ServerState.from_tensors(decode_tensors(raw))
        except (StateError, ValueError, KeyError, TypeError) as exc:
            raise Damaged(f"{tensor_path} is not a server state ({exc})") from None
        return self._checked(path, meta, state)

    def _verified_json(self, path: Path) -> dict[str, Any]:
        """The JSON of ``path`` after its digest, format and plan hash are checked."""
        raw = _read(path, str(path))
        if not raw.strip():
            raise Damaged(f"{path} is empty")
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            raise Damaged(f"{path} is not valid JSON ({exc}): it is truncated or damaged") from None
        if not isinstance(meta, dict):
            raise Damaged(f"{path} is not a JSON object: it is damaged")
        if DIGEST not in meta and meta.get("format") in OLD_FORMATS:
            raise StateError(f"{path} was written by an older fltac (format {meta['format']}) without a digest, so it "
                             f"cannot be verified; finish this federation with that version, or {FIX}")
        digest = meta.pop(DIGEST, None)
        if digest != canonical_digest(meta):
            raise Damaged(f"{path} fails its SHA-256 check: its content changed after it was written "
                          "(disk damage or a hand edit)")
        if meta.get("format") != FORMAT:
            raise StateError(f"{path} is not an aggregator checkpoint of format {FORMAT} (it says "
                             f"{meta.get('format')!r:.60}); use the fltac version that wrote it, or {FIX}")
        if meta.get("plan_hash") != self.plan_hash:
            raise StateError(f"{path} belongs to another plan (hash {str(meta.get('plan_hash'))[:12]}, this plan "
                             f"{self.plan_hash[:12]}); use the original plan or a fresh workspace")
        return meta

    def _checked(self, path: Path, meta: dict[str, Any], state: ServerState) -> Checkpoint:
        """The checkpoint of ``meta`` and ``state`` if its values are ones this plan can produce."""
        members, tasks, history = meta.get("members"), meta.get("tasks"), meta.get("history")
        labels = meta.get("labels", {})  # absent in checkpoints written before trim_head reached the roles
        if not (isinstance(members, dict) and isinstance(tasks, dict) and isinstance(history, list)
                and all(isinstance(row, dict) for row in history) and isinstance(labels, dict)):
            raise Damaged(f"{path} holds values this plan cannot produce: members, tasks and labels must be JSON "
                          "objects and history a list of objects")
        problems = checkpoint_problems(state, members, tasks, self.facts, labels)
        if meta.get("round") != state.round:
            problems.append(f"round {meta.get('round')!r:.20} disagrees with its tensors (round {state.round})")
        ledger_bytes = meta.get("ledger_bytes")
        if type(ledger_bytes) is not int or ledger_bytes < 0:
            problems.append(f"ledger_bytes must be a non-negative integer, got {ledger_bytes!r:.20}")
        if problems:
            raise Damaged(f"{path} holds values this plan cannot produce: {'; '.join(problems)}")
        return Checkpoint(state, members, tasks, history, labels)
