"""Fault benchmark: a process federation under random kills still finishes with the same adapters.

One uninterrupted run of the tiny plan (3 sites, tiny-bert, every role its own
process, as `fltac demo` starts them) is the reference. Then ``--runs`` runs
of the same plan each get ``--kills`` kills from a seeded schedule: each kill
picks a victim (the aggregator half of the time, else a random site), SIGKILL
or SIGTERM, a trigger point of the protocol (a phase of a round -- ROUND_START
sent, SKETCHES / UPDATE received, ASSIGNMENT sent -- or FINAL sent, DONE
received; strictly later than the previous kill's) and a delay of 0-0.5 s
after the aggregator's ledger records the trigger. The victim is started
again with the same command: the aggregator at once, a site after 1 s.

Recorded per run: completed (every process's last incarnation exits 0),
outputs identical to the reference run (the aggregator's final state, its
out/cluster_* peft files and every site's final adapters, exact tensor
equality), and if not, whether they equal the simulation of the
participation the aggregator recorded (a site that missed a round); wall
time, and the overhead per kill (wall time minus the reference's, over the
kills that ended a process). The load average is measured before, at the
start of each run and after.

    .venv/bin/python benchmarks/faults.py                    # 8 runs x 3 kills (about 6-10 min on 2 loaded cores)
    .venv/bin/python benchmarks/faults.py --quick --out /tmp/f  # 2 runs x 1 kill (trial)
    .venv/bin/python benchmarks/faults.py --report-only      # redo faults.md/.png from faults.json

Writes benchmarks/results/faults.json, faults.md and faults.png. The process
helpers and the exact comparison are the fault tests' (``tests/roles``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests" / "roles"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from fault_reference import (
    RunOutputs,
    participation,
    read_outputs,
    run_differences,
    simulate,
)
from fault_reference import differences as sim_differences
from proc_harness import RoleProc, cleanup, launch, start_federation
from roles_harness import make_fed, tiny_plan

from fltac_secure.data.layout import AGGREGATOR
from fltac_secure.plan import Plan

ROUNDS = 3
ROUND_S = 30.0
JOIN_S = 30.0
TRAINING = {"local_steps": 30, "batch_size": 8, "max_seq_length": 16, "learning_rate": 0.01}
SITE_GAP_S = 1.0
RUN_LIMIT_S = 300.0
ROUND_PHASES = ("training", "sketches", "assignment", "update")
TRIGGER = {"training": ("sent", "ROUND_START"), "sketches": ("received", "SKETCHES"),
           "assignment": ("sent", "ASSIGNMENT"), "update": ("received", "UPDATE"),
           "final": ("sent", "FINAL"), "done": ("received", "DONE")}  # fmt: skip


def bench_plan() -> Plan:
    timeouts = {"handshake_s": 5, "round_s": ROUND_S, "idle_s": 30, "join_s": JOIN_S}
    return tiny_plan(rounds=ROUNDS, training=TRAINING, timeouts=timeouts)


@dataclass
class Kill:
    victim: str
    signal: str
    round: int
    phase: str
    delay_s: float
    fired_s: float | None = None  # seconds after the run started
    exit_code: int | None = None
    note: str = ""


def schedule(rng: random.Random, plan: Plan, kills: int) -> list[Kill]:
    """``kills`` kills at distinct, increasing protocol points (rounds x phases, then FINAL, DONE)."""
    points = [(r, p) for r in range(plan.rounds) for p in ROUND_PHASES] + [(plan.rounds, "final"), (plan.rounds, "done")]
    chosen = sorted(rng.sample(range(len(points)), kills))
    out = []
    for i in chosen:
        victim = AGGREGATOR if rng.random() < 0.5 else rng.choice(plan.roster)
        sig = rng.choice(["SIGKILL", "SIGTERM"])
        out.append(Kill(victim, sig, points[i][0], points[i][1], round(rng.uniform(0.0, 0.5), 3)))
    return out


def _ledger_rows(agg: Path) -> list[dict[str, Any]]:
    rows = []
    path = agg / "ledger.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _trigger_index(agg: Path, k: Kill, start: int) -> int | None:
    """Index of the first aggregator ledger line at or after ``start`` that is ``k``'s trigger."""
    direction, kind = TRIGGER[k.phase]
    for i, row in enumerate(_ledger_rows(agg)[start:], start):
        if row["direction"] == direction and row["kind"] == kind and row["round"] == k.round:
            return i
    return None


def _fire(layout: Any, procs: dict[str, RoleProc], k: Kill, t0: float, attempt: int) -> bool:
    """Kill ``k.victim`` now and start it again with the same command; False if it had already exited."""
    victim = procs[k.victim]
    if victim.proc.poll() is not None:
        k.note = f"not fired: {k.victim} had already exited ({victim.proc.returncode})"
        return False
    k.fired_s = round(time.monotonic() - t0, 3)
    victim.send(getattr(signal, k.signal))
    try:
        k.exit_code = victim.proc.wait(60)
    except subprocess.TimeoutExpired:  # a SIGTERM that is not acted on: kill it outright
        victim.proc.kill()
        k.exit_code = victim.proc.wait(10)
        k.note = "did not stop on SIGTERM within 60 s; SIGKILLed"
    if k.victim != AGGREGATOR:
        time.sleep(SITE_GAP_S)
    procs[k.victim] = launch(layout, k.victim, attempt=attempt)
    return True


def run_once(root: Path, plan: Plan, kills: list[Kill]) -> tuple[dict[str, Any], RunOutputs | None, list[RoleProc]]:
    """One federation with ``kills``; returns its record, its outputs (None if unreadable) and every process."""
    fed = make_fed(root, plan)
    t0 = time.monotonic()
    procs = start_federation(fed.layout)
    every: list[RoleProc] = list(procs.values())
    start, agg_dir, attempts = 0, fed.layout.aggregator, {}
    try:
        for k in kills:
            while (idx := _trigger_index(agg_dir, k, start)) is None:
                if procs[AGGREGATOR].proc.poll() is not None or time.monotonic() - t0 > RUN_LIMIT_S:
                    k.note = "not fired: the run ended (or timed out) before its trigger"
                    break
                time.sleep(0.02)
            if idx is None:
                continue
            start = idx + 1
            time.sleep(k.delay_s)  # the random part of the schedule
            attempts[k.victim] = attempts.get(k.victim, 0) + 1
            if _fire(fed.layout, procs, k, t0, attempts[k.victim]):
                every.append(procs[k.victim])
        codes = _wait_all(procs, t0)
        wall = time.monotonic() - t0
    finally:
        cleanup(every)
    record = {"wall_s": round(wall, 2), "exit_codes": codes,
              "completed": all(c == 0 for c in codes.values()), "kills": [asdict(k) for k in kills]}  # fmt: skip
    try:
        outputs: RunOutputs | None = read_outputs(agg_dir, fed.layout.sites)
    except (OSError, ValueError, KeyError) as exc:
        outputs, record["outputs_error"] = None, str(exc)
    if not record["completed"]:  # the last lines of each role that did not exit 0 (the run's folder is removed)
        record["tails"] = {name: procs[name].tail(4) for name, code in codes.items() if code != 0}
    return record, outputs, every


def _wait_all(procs: dict[str, RoleProc], t0: float) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for name in [AGGREGATOR, *sorted(n for n in procs if n != AGGREGATOR)]:
        left = max(1.0, RUN_LIMIT_S - (time.monotonic() - t0))
        try:
            codes[name] = procs[name].proc.wait(left if name == AGGREGATOR else min(left, 120.0))
        except subprocess.TimeoutExpired:  # still running at the limit
            codes[name] = None
    return codes


def judge(record: dict[str, Any], got: RunOutputs | None, ref: RunOutputs, plan: Plan, data_root: Path) -> None:
    """Identical to the reference run? If not: equal to the simulation of the participation it had?"""
    if got is None:
        record["identical"] = False
        return
    bad = run_differences(got, ref)
    record["identical"] = not bad
    record["participation_full"] = all(len(u) == len(plan.roster) for _, _, u in participation(got.history))
    if bad:
        record["differences"] = bad[:5]
        parts = participation(got.history)
        record["equals_participation_simulation"] = not sim_differences(plan, got, simulate(plan, data_root, parts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8, help="runs with kills")
    ap.add_argument("--kills", type=int, default=3, help="kills per run")
    ap.add_argument("--seed", type=int, default=10, help="seed of the kill schedule")
    ap.add_argument("--quick", action="store_true", help="2 runs x 1 kill (results named faults_quick.*)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--report-only", action="store_true", help="redo the summary, markdown and plot from the JSON")
    args = ap.parse_args(argv)
    name = "faults_quick" if args.quick else "faults"
    if args.report_only:
        res = json.loads((args.out / f"{name}.json").read_text())
        for record in res["records"]:
            summarise(record, res["reference"]["wall_s"])
        (args.out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
        (args.out / f"{name}.md").write_text(markdown(res))
        plot(res, args.out / f"{name}.png")
        return 0
    runs, kills = (2, 1) if args.quick else (args.runs, args.kills)
    res = bench(runs, kills, args.seed)
    res["command"] = "python benchmarks/faults.py" + (" --quick" if args.quick else
                                                      f" --runs {runs} --kills {kills} --seed {args.seed}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(markdown(res))
    plot(res, args.out / f"{name}.png")
    print(markdown(res))
    return 0


def bench(runs: int, kills: int, seed: int) -> dict[str, Any]:
    plan, rng = bench_plan(), random.Random(seed)
    started, load_before = time.monotonic(), os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="fltac-faults-"))
    try:
        ref_record, ref, _ = run_once(tmp / "reference", plan, [])
        if ref is None or not ref_record["completed"]:
            raise SystemExit(f"the reference run did not complete: {ref_record}")
        ref_record["equals_simulation"] = not sim_differences(plan, ref, simulate(plan, tmp / "reference",
                                                                                  participation(ref.history)))
        print(f"reference: {ref_record['wall_s']} s", flush=True)
        records = []
        for i in range(runs):
            load = [round(x, 2) for x in os.getloadavg()]
            record, got, _ = run_once(tmp / f"run{i}", plan, schedule(rng, plan, kills))
            record["loadavg_at_start"] = load
            judge(record, got, ref, plan, tmp / f"run{i}")
            summarise(record, ref_record["wall_s"])
            records.append(record)
            print(f"run {i}: {record['wall_s']} s, completed {record['completed']}, identical "
                  f"{record['identical']}, kills {[(k['victim'], k['signal'], k['phase'], k['round']) for k in record['kills']]}",
                  flush=True)
            shutil.rmtree(tmp / f"run{i}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"plan": {"rounds": plan.rounds, "sites": len(plan.roster), "model": plan.model.base, "round_s": ROUND_S,
                     "local_steps": plan.training.local_steps},
            "runs": runs, "kills_per_run": kills, "seed": seed, "reference": ref_record, "records": records,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
            "total_s": round(time.monotonic() - started, 1)}  # fmt: skip


def summarise(record: dict[str, Any], reference_wall_s: float) -> None:
    """Kills that ended a process (a signal that found the victim already finishing, exit 0, is not one), and
    the run's wall time over the reference's, per such kill (completed runs only)."""
    ended = sum(k["fired_s"] is not None and k["exit_code"] not in (None, 0) for k in record["kills"])
    record["fired"] = ended
    record["overhead_per_kill_s"] = (round((record["wall_s"] - reference_wall_s) / ended, 2)
                                     if ended and record["completed"] else None)


def _kill_text(k: dict[str, Any]) -> str:
    where = "FINAL" if k["phase"] == "final" else "DONE" if k["phase"] == "done" else f"r{k['round']} {k['phase']}"
    text = f"{k['victim']} {k['signal']} @ {where} +{k['delay_s']:.2f}s"
    return text + (" (not fired)" if k["fired_s"] is None else f" -> exit {k['exit_code']}")


def markdown(res: dict[str, Any]) -> str:
    rec, ref, m = res["records"], res["reference"], res["machine"]
    done = [r for r in rec if r["completed"]]
    ident = [r for r in rec if r.get("identical")]
    fired = sum(r["fired"] for r in rec)
    over = [r["overhead_per_kill_s"] for r in rec if r["overhead_per_kill_s"] is not None]
    p = res["plan"]
    lines = [
        "# Fault benchmark: random kills of real role processes", "",
        (f"Plan: {p['model']}, {p['sites']} sites, {p['rounds']} rounds, local_steps {p['local_steps']}, "
        f"round_s {p['round_s']:g}; {res['runs']} runs x {res['kills_per_run']} kill(s), seed {res['seed']}. "
        f"Machine: {m['cpus']} CPUs shared with other jobs; load average (1/5/15 min, os.getloadavg) before "
        f"{m['loadavg_before']}, 1-min at the start of each run {[r['loadavg_at_start'][0] for r in rec]}, after "
        f"{m['loadavg_after']}: **wall times are those of a loaded machine; compare them with the reference run "
        f"of the same session, not across machines**. Total {res['total_s']} s."), "",
        f"Command: `{res['command']}`", "",
        (f"- Runs completed: **{len(done)} of {len(rec)}**; outputs identical to the reference run (exact tensor "
        f"equality of the aggregator's state, out/cluster_* files and every site's final adapters): "
        f"**{len(ident)} of {len(rec)}**."),
        (f"- Kills that ended a process: {fired} of {sum(len(r['kills']) for r in rec)} scheduled (exit -9: "
        "SIGKILL; 143: the CLI's orderly stop on SIGTERM; -15: SIGTERM before the CLI installed its handler, "
        "i.e. a role still starting; 0: the victim had just finished by itself; not fired: the run ended before "
        "the trigger)."),
        (f"- Reference run (no kill): {ref['wall_s']} s; equals the in-process simulation bit for bit: "
        f"{ref.get('equals_simulation')}."),
        (f"- Wall-time overhead per kill (completed runs; (run wall - reference wall) / kills that ended a "
        f"process): median "
        f"{round(statistics.median(over), 2) if over else 'n/a'} s, range "
        f"{f'{min(over)} to {max(over)}' if over else 'n/a'} s."), "",
        "| run | kills | wall (s) | completed | identical | overhead/kill (s) | note |",
        "|---:|---|---:|:---:|:---:|---:|---|",
    ]  # fmt: skip
    for i, r in enumerate(rec):
        note = ""
        if not r["completed"]:
            note = "; ".join(f"{name} exit {r['exit_codes'][name]} (still running at the limit if None), last lines: "
                             + " / ".join(x.strip()[:110] for x in tail.splitlines()[-2:])
                             for name, tail in r.get("tails", {}).items())
        elif not r.get("identical"):
            note = f"participation simulation equal: {r.get('equals_participation_simulation')}"
        lines.append(f"| {i} | {'; '.join(_kill_text(k) for k in r['kills'])} | {r['wall_s']} | "
                     f"{'yes' if r['completed'] else 'NO'} | {'yes' if r.get('identical') else 'no'} | "
                     f"{r['overhead_per_kill_s'] if r['overhead_per_kill_s'] is not None else ''} | {note} |")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = res["records"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rec) + 2), 3.4))
    colors = ["tab:green" if r.get("identical") else "tab:orange" if r["completed"] else "tab:red" for r in rec]
    ax.bar(range(len(rec)), [r["wall_s"] for r in rec], color=colors)
    ax.axhline(res["reference"]["wall_s"], color="black", ls="--", lw=1, label="reference (no kill)")
    for i, r in enumerate(rec):
        ax.text(i, r["wall_s"], f"{r['fired']}k", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rec)))
    ax.set_xlabel("run (green: identical outputs, orange: completed, red: failed; Nk: kills that ended a process)",
                  fontsize=8)
    ax.set_ylabel("wall time (s)")
    ax.set_title("Random kills of role processes", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
