"""Workspace storage shared by both roles: atomic JSON and safetensors files, the plan copy.

Every write goes to a temp file in the same folder, is fsync'd, renamed over
the target and the folder fsync'd, so a crash leaves the old file or the new
one, never half of one.  Arrays are stored as safetensors (never pickle: a
tampered checkpoint must not be able to run code when loaded).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fltac_secure.errors import StateError
from fltac_secure.atomic import atomic_write_bytes
from fltac_secure.plan import Plan, plan_hash

PLAN_FILE = "plan.yaml"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateError(f"{what} {path} is missing") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"{what} {path} is unreadable or corrupt ({exc}); remove the workspace's state/ to start over") from None


def encode_tensors(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str] | None = None) -> bytes:
    """Arrays as the bytes of one safetensors file (what ``write_tensors`` writes)."""
    data = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return st_save(data, metadata=dict(meta) if meta else None)


def decode_tensors(raw: bytes) -> dict[str, np.ndarray]:
    """Inverse of ``encode_tensors``; ValueError (never a safetensors-specific error) if ``raw`` is not one."""
    try:
        return st_load(raw)
    except SafetensorError as exc:
        raise ValueError(str(exc)) from None


def write_tensors(path: Path, tensors: Mapping[str, np.ndarray], meta: Mapping[str, str] | None = None) -> None:
    """Arrays as one safetensors file, atomically."""
    atomic_write_bytes(path, encode_tensors(tensors, meta))


def read_tensors(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise StateError(f"{what} {path} is missing") from None
    try:
        return decode_tensors(raw)
    except ValueError as exc:
        raise StateError(f"{what} {path} is corrupt ({exc}); remove the workspace's state/ to start over") from None


def pin_plan(workspace: Path, plan: Plan) -> Path:
    """Copy the plan into ``workspace/plan.yaml``; refuse a workspace made under another plan.

    The copy is what ``fltac audit`` reads; the check stops a resume from
    mixing two federations' checkpoints.
    """
    path = Path(workspace) / PLAN_FILE
    digest = plan_hash(plan)
    if path.is_file():
        from fltac_secure.plan import load_plan

        old = plan_hash(load_plan(path))
        if old != digest:
            raise StateError(
                f"workspace {workspace} was used with another plan (hash {old[:12]}, now {digest[:12]}); "
                "use a fresh workspace or the original plan"
            )
        return path
    text = f"# Plan of federation {plan.federation!r}, hash {digest}\n" + yaml.safe_dump(
        plan.model_dump(mode="json"), sort_keys=False
    )
    atomic_write_bytes(path, text.encode())
    return path


def append_jsonl(path: Path, row: Mapping[str, Any]) -> None:
    """Append one JSON line (metrics); fsync'd so a crash loses at most that line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(dict(row), sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
