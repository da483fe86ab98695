"""The audit of one workspace: its ledger, its plan and the model sizes its role recorded.

What `fltac audit` and `fltac demo` print.  Needs no model: the sizes come from
the workspace's ``model_facts.json`` (written by the role when it started), so
an audit reads a few files and imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fltac_secure.errors import ConfigError
from fltac_secure.federation.audit import (
    GROUPINGS,
    Totals,
    bytes_per_parameter,
    compare,
    fedit_bytes,
    final_pairs,
    group_totals,
    secure_overhead,
    total,
    trim_savings,
)
from fltac_secure.federation.ledger import LEDGER_NAME, LedgerReadResult, read_ledger
from fltac_secure.federation.sizes import model_sizes, workspace_model_facts
from fltac_secure.federation.storage import PLAN_FILE
from fltac_secure.plan import Plan, load_plan

WORKSPACE_HINT = "give --workspace a site's or the aggregator's workspace folder (the `workspace` of its site file)"


@dataclass
class AuditReport:
    by: str
    ledger: LedgerReadResult
    groups: dict[str, Totals]
    total: Totals
    comparison: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"by": self.by, "groups": {k: v.as_dict() for k, v in self.groups.items()},
                "total": self.total.as_dict(), "comparison": self.comparison, "skipped_lines": self.ledger.skipped}


def check_workspace(workspace: Path, plan_path: Path | None) -> Path:
    """The plan file to read for ``workspace``; ConfigError when the folder is not a workspace."""
    workspace = Path(workspace)
    if not workspace.is_dir():
        what = "is not a folder" if workspace.exists() else "does not exist"
        raise ConfigError(f"workspace {workspace} {what}; {WORKSPACE_HINT}")
    plan = plan_path if plan_path is not None else workspace / PLAN_FILE
    if not (workspace / LEDGER_NAME).is_file():
        raise ConfigError(f"{workspace} holds no {LEDGER_NAME}, so it is not a workspace a role has run in; "
                          f"{WORKSPACE_HINT}")
    if plan_path is None and not plan.is_file():
        raise ConfigError(f"{workspace} holds no {PLAN_FILE} (written when a role starts); give the "
                          "federation's plan with --plan")
    return plan


def audit_workspace(workspace: Path, by: str, rank: int, plan_path: Path | None = None,
                    plan: Plan | None = None) -> AuditReport:
    """Totals of ``workspace``'s ledger grouped ``by``, and the FedIT (at ``rank``) / full comparison."""
    if by not in GROUPINGS:
        raise ConfigError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    if plan is None:
        plan = load_plan(check_workspace(workspace, plan_path))
    led = read_ledger(Path(workspace) / LEDGER_NAME)
    sizes = model_sizes(plan, rank, workspace_model_facts(workspace, plan))
    comparison = compare(led.entries, plan.roster, sizes)
    cmp = comparison.as_dict()
    cmp["bytes"] = bytes_per_parameter(led.entries, plan.roster)
    cmp["compression"] = _compression(plan, comparison, sizes.fedit_adapter, final_pairs(led.entries, plan.roster))
    trimmed = trim_savings(sizes)
    if trimmed is not None:
        cmp["compression"]["trim_head"] = trimmed
    secure = secure_overhead(led.entries, plan.roster)
    if secure is not None:
        cmp["secure_aggregation"] = secure
    return AuditReport(by, led, group_totals(led.entries, by, plan.roster), total(led.entries), cmp)


def _compression(plan: Plan, comparison: Any, fedit_adapter: int, finals: int) -> dict[str, Any]:
    """The plan's compression and what FedIT would have moved in bytes, in float32 and at the same setting."""
    from fltac_secure.learning.compress import wire_nbytes  # numpy only

    c = plan.compression
    up = wire_nbytes(fedit_adapter, c.bits, c.block_size) if c.enabled else fedit_adapter * 4
    down = wire_nbytes(fedit_adapter, c.download_bits, c.block_size) if c.download else None
    return {"bits": c.bits, "download_bits": c.download_bits, "block_size": c.block_size,
            "error_feedback": c.error_feedback, "fedit_bytes": fedit_bytes(comparison, up, down, finals)}
