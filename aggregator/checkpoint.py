"""The aggregator's workspace: atomic round checkpoints under ``state/``.

A checkpoint is two files: ``state/server-<round>.safetensors`` (the
``ServerState`` arrays: slot vectors, cluster vectors, labels, centroids)
and ``state/checkpoint.json`` (round, plan hash, members and their slot
counts, the ledger position, round history).  The JSON is written last and
names the tensor file, so it is the commit point: a crash between the two
leaves the previous checkpoint in force.  Nothing is pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fltac_secure.errors import StateError
from fltac_secure.federation.ledger import LEDGER_NAME
from fltac_secure.federation.rounds import ServerState
from fltac_secure.federation.storage import read_json, read_tensors, write_json, write_tensors

FORMAT = "fltac-aggregator-checkpoint/1"
STATE_DIR = "state"
CHECKPOINT = "checkpoint.json"


@dataclass
class Checkpoint:
    """What the aggregator needs to resume: the algorithm's state and who holds which slots."""

    state: ServerState
    members: dict[str, list[int]] = field(default_factory=dict)  # site -> sample count per slot
    tasks: dict[str, list[str]] = field(default_factory=dict)  # only when the plan shares task names
    history: list[dict[str, Any]] = field(default_factory=list)


class CheckpointStore:
    """Reads and writes checkpoints of one workspace for one plan hash."""

    def __init__(self, workspace: Path, plan_hash: str) -> None:
        self.workspace = Path(workspace)
        self.dir = self.workspace / STATE_DIR
        self.plan_hash = plan_hash

    @property
    def exists(self) -> bool:
        return (self.dir / CHECKPOINT).is_file()

    def save(self, ckpt: Checkpoint) -> Path:
        """Write the tensors, then commit with the JSON; older tensor files are removed after."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"server-{ckpt.state.round:06d}.safetensors"
        write_tensors(self.dir / name, ckpt.state.to_tensors(), {"plan_hash": self.plan_hash})
        ledger = self.workspace / LEDGER_NAME
        write_json(self.dir / CHECKPOINT, {
            "format": FORMAT, "plan_hash": self.plan_hash, "round": ckpt.state.round, "tensors": name,
            "members": ckpt.members, "tasks": ckpt.tasks, "history": ckpt.history,
            "ledger_bytes": ledger.stat().st_size if ledger.exists() else 0,
        })  # fmt: skip
        for old in self.dir.glob("server-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.dir / CHECKPOINT

    def load(self) -> Checkpoint:
        """The last committed checkpoint; StateError if it is corrupt or from another plan."""
        meta = read_json(self.dir / CHECKPOINT, "aggregator checkpoint")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise StateError(f"{self.dir / CHECKPOINT} is not an aggregator checkpoint ({FORMAT})")
        if meta.get("plan_hash") != self.plan_hash:
            raise StateError(
                f"checkpoint in {self.dir} belongs to another plan (hash {str(meta.get('plan_hash'))[:12]}); "
                "use the original plan or a fresh workspace"
            )
        state = ServerState.from_tensors(read_tensors(self.dir / str(meta["tensors"]), "aggregator checkpoint"))
        if state.round != meta.get("round"):
            raise StateError(f"checkpoint round {meta.get('round')} disagrees with its tensors ({state.round})")
        members = {str(s): [int(c) for c in counts] for s, counts in dict(meta.get("members", {})).items()}
        tasks = {str(s): [str(t) for t in ts] for s, ts in dict(meta.get("tasks", {})).items()}
        return Checkpoint(state, members, tasks, list(meta.get("history", [])))
