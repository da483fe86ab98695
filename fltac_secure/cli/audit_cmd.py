"""`fltac audit`: parameters and bytes that crossed the wire, from a workspace's ledger."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import typer
from rich.table import Table

from fltac_secure.cli.common import console, print_json
from fltac_secure.errors import ConfigError
from fltac_secure.federation.audit import GROUPINGS
from fltac_secure.federation.audit_report import AuditReport, audit_workspace
from fltac_secure.plan import Plan


def _parse_compare(spec: str) -> int:
    m = re.fullmatch(r"fedit:(\d+)", spec.strip())
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"--compare must look like fedit:RANK with RANK >= 1 (e.g. fedit:8), got {spec!r}")
    return int(m.group(1))


def _fmt(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}" if float(n).is_integer() else f"{n:.4f}"


def audit(
    workspace: Path = typer.Option(..., "--workspace", "-w", help="A site's or the aggregator's workspace (holds ledger.jsonl and plan.yaml)."),
    by: str = typer.Option("round", "--by", help=f"Group totals by one of: {', '.join(GROUPINGS)}."),
    compare_to: str = typer.Option("fedit:8", "--compare", help="Baseline to compare with, as fedit:RANK."),
    plan_path: Path | None = typer.Option(None, "--plan", help="Plan file (default: WORKSPACE/plan.yaml)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    csv_out: bool = typer.Option(False, "--csv", help="Print the grouped totals as CSV."),
) -> None:
    """Count what crossed the wire, by round, site, direction or kind, against FedIT and full fine-tuning.

    From the workspace's ledger: messages, parameters (tensor elements), payload
    bytes and bytes on the wire; then what FedIT (one shared adapter at the
    --compare rank) and full fine-tuning would have moved for the same
    (round, site) participations.  Rounds are numbered as in the plan (from 0);
    `final` is the hand-out of the final adapters after the last round and
    `session` the connection upkeep (handshakes, JOIN, acknowledgements, keep-alives).
    """
    if json_out and csv_out:
        raise ConfigError("choose one of --json and --csv")
    report = audit_workspace(workspace, by, _parse_compare(compare_to), plan_path)
    if json_out:
        print_json(report.as_dict())
    elif csv_out:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([by, *report.total.as_dict()])
        for k, v in report.groups.items():
            w.writerow([k, *v.as_dict().values()])
        w.writerow(["total", *report.total.as_dict().values()])
        typer.echo(buf.getvalue().rstrip())
    else:
        _print_tables(report)


def print_audit(workspace: Path, plan: Plan, by: str = "kind", rank: int = 8) -> None:
    """Print the audit tables of a workspace (used by `fltac audit` and `fltac demo`)."""
    _print_tables(audit_workspace(workspace, by, rank, plan=plan))


def _print_tables(report: AuditReport) -> None:
    t = Table(title=f"Wire traffic by {report.by}")
    for col in (report.by, *report.total.as_dict()):  # the CSV's and JSON's names, spaced
        t.add_column(col.replace("_", " "), justify="right")
    for k, v in report.groups.items():
        t.add_row(k, *(_fmt(x) for x in v.as_dict().values()))
    t.add_row("total", *(_fmt(x) for x in report.total.as_dict().values()), style="bold")
    console.print(t)
    cmp = report.comparison
    c = Table(title=f"Parameters moved for the same {cmp['participations']} (round, site) participations")
    for col in ("method", "up", "down", "total", "vs FL-TAC"):
        c.add_column(col, justify="right")
    actual = cmp["fltac"]["total"]
    for name in [k for k in cmp if isinstance(cmp[k], dict) and "up" in cmp[k]]:
        row = cmp[name]
        ratio = row["total"] / actual if actual else None
        c.add_row(name, _fmt(row["up"]), _fmt(row["down"]), _fmt(row["total"]), "-" if ratio is None else f"{ratio:.2f}x")
    console.print(c)
    _print_bytes(report)
    secure = report.comparison.get("secure_aggregation")
    if secure:
        s = Table(title="Secure aggregation: bytes its own messages added (keys, sealed shares, signatures, "
                        "unmasking shares; the masked adapters are counted above)")
        for col in ("round / site", "messages", "payload bytes", "wire bytes"):
            s.add_column(col, justify="right")
        for label, block in (("round", secure["per_round"]), ("site", secure["per_site"])):
            for k, v in block.items():
                s.add_row(f"{label} {k}", _fmt(v["messages"]), _fmt(v["payload_bytes"]), _fmt(v["wire_bytes"]))
        s.add_row("total", _fmt(secure["overhead_messages"]), _fmt(secure["overhead_payload_bytes"]),
                  _fmt(secure["overhead_wire_bytes"]), style="bold")
        console.print(s)
    if report.ledger.skipped:
        console.print(f"[yellow]{report.ledger.skipped} torn or malformed ledger line(s) skipped[/yellow]")


def _print_bytes(report: AuditReport) -> None:
    """Bits per parameter by kind and the bytes saved against float32; FedIT's bytes for the same rounds."""
    per = report.comparison.get("bytes") or {}
    comp = report.comparison.get("compression") or {}
    if not per:
        return
    bits = comp.get("bits", 32)
    b = Table(title=f"Tensor bytes per parameter (compression.bits {bits}; float32 is 32 bits)")
    for col in ("kind", "parameters", "tensor bytes", "bits / parameter", "float32 bytes", "saved"):
        b.add_column(col, justify="right")
    for kind, row in per.items():
        b.add_row(kind, _fmt(row["parameters"]), _fmt(row["tensor_bytes"]), f"{row['bits_per_parameter']:.2f}",
                  _fmt(row["float32_bytes"]), _fmt(row["bytes_saved"]))
    console.print(b)
    fedit = comp.get("fedit_bytes")
    if fedit:
        up = sum(r["tensor_bytes"] for k, r in per.items() if k in ("UPDATE", "SKETCHES", "SA_MASKED"))
        console.print(f"FedIT would have uploaded {fedit['float32_up']:,} bytes in float32"
                      + (f", {fedit['compressed_up']:,} at {bits} bits" if bits < 32 else "")
                      + f"; FL-TAC uploaded {up:,} tensor bytes (updates and sketches)")
        down_bits = comp.get("download_bits", 32)
        down = sum(r["tensor_bytes"] for k, r in per.items() if k in ("ROUND_START", "FINAL", "ASSIGNMENT"))
        console.print(f"FedIT would have downloaded {fedit['float32_down']:,} bytes in float32"
                      + (f", {fedit['compressed_down']:,} with round starts at {down_bits} bits (final adapters "
                         "in float32)" if down_bits < 32 else "")
                      + f"; FL-TAC downloaded {down:,} tensor bytes (round starts, final adapters)")
    trim = comp.get("trim_head")
    if trim:
        tasks = ", ".join(f"{t} {r['wire']:,} ({100 * r['fraction_saved']:.0f}% fewer)"
                          for t, r in trim["per_task"].items())
        console.print(f"Head trimming: a slot sends and receives its LoRA part and its task's head rows only, "
                      f"numbers per slot and round against {trim['untrimmed_slot']:,} untrimmed: {tasks}; "
                      "the counts above are of the trimmed vectors")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
