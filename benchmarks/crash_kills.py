"""kill -9 at random moments: does ``--resume`` always finish, with nothing lost and nothing recorded twice?

    python benchmarks/crash_kills.py --kills 30

1. Trains the smoke digits teacher (cached), then runs one search uninterrupted (the smoke profile, the
   random sampler, a fixed seed, ASHA on: tests/crash.py's Search) and times it: W seconds.
2. Runs searches of the same settings under new names; each run of one (the start, then each resume)
   has its process group killed with SIGKILL at a moment drawn uniformly from [0, W) after it starts,
   up to ``--kills-per-search`` times; a run that ends before its moment is not killed. Then the search is
   resumed until it exits 0 (at most 3 tries: more is a resume that cannot finish).
3. Each search is audited (search/audit.py: every Ray trial one Optuna trial and one MLflow run, in a
   final state, with the same outcome; none RUNNING; the requested count; nothing twice; Pareto tags =
   a recount) and compared with the uninterrupted search (same configurations and outcomes).

Every fault-injection point a run passes is traced (``M2MDC_FAULT_TRACE``, search/faults.py), so each
kill is named by the window it fell in: the last point passed before it ("start" if none). Writes
OUT/benchmarks/crash_kills/RUN/{kills.json,report.md}; a run started again continues from kills.json.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m2mdc.arch_latency import machine  # noqa: E402
from m2mdc.errors import Parser, cli  # noqa: E402
from m2mdc.io import out_root, write_json, write_text  # noqa: E402
from search.faults import POINTS, TRACE_ENV  # noqa: E402
from tests.crash import Search, kill_group  # noqa: E402


def window_at(trace: Path, when: float) -> str:
    """The last fault point passed before ``when`` (epoch seconds): the window a kill then fell in."""
    last = "start"
    if trace.exists():
        for line in trace.read_text().splitlines():
            t, point = line.split()
            if float(t) <= when:
                last = point
    return last


def kill_at_random(search: Search, resume: bool, after: float) -> dict:
    """Start (or resume) ``search`` and SIGKILL its group ``after`` seconds later, unless it ended first."""
    proc = search.start(resume=resume)
    t0 = time.time()
    try:
        proc.wait(timeout=after)
        return {"killed": False, "exit": proc.returncode, "after_s": round(after, 2)}
    except subprocess.TimeoutExpired:
        when = time.time()
        kill_group(proc)
        trace = Path(search.env[TRACE_ENV])
        return {"killed": True, "after_s": round(when - t0, 2), "window": window_at(trace, when)}


def episode(out: Path, name: str, wall: float, kills: int, rng: random.Random, reference: dict) -> dict:
    search = Search(out, name, num_samples=reference["num_samples"],
                    env={TRACE_ENV: str(out / f"{name}.trace")})
    runs = []

    def exists() -> bool:  # a kill in the first seconds (imports, checks) comes before the search's record:
        return (search.exp_dir / "search.json").exists()  # nothing to resume; the same command starts it

    for k in range(kills):
        resume = exists()
        runs.append({**kill_at_random(search, resume=resume, after=rng.uniform(0, wall)), "resume": resume})
        print(f"[{name}] run {k}: {runs[-1]}", flush=True)
        if not runs[-1]["killed"]:
            break
    codes, restarts = [], sum(not r["resume"] for r in runs[1:])
    if runs[-1]["killed"] or runs[-1]["exit"] != 0:
        for _ in range(3):
            restarts += not exists()
            codes.append(search.run(resume=exists()))
            if codes[-1] == 0:
                break
    problems = search.audit() if (not codes or codes[-1] == 0) else ["the search never finished"]
    started = (search.exp_dir / "optuna.db").exists()
    outcome = {str(k): list(v) for k, v in search.outcome().items()} if started else {}
    mismatched = sorted(n for n in set(outcome) | set(reference["outcome"])
                        if outcome.get(n) != reference["outcome"].get(n))
    result = {"name": name, "runs": runs, "resume_codes": codes, "restarts": restarts,
              "finished": not codes or codes[-1] == 0, "problems": problems, "trials": len(outcome),
              "differs_from_uninterrupted": mismatched}
    print(f"[{name}] resumes {codes}; audit {problems or 'clean'}; differs at trials {mismatched or 'none'}",
          flush=True)
    return result


def report(state: dict) -> str:
    kills = [r for e in state["episodes"] for r in e["runs"] if r["killed"]]
    windows = Counter(r["window"] for r in kills)
    before_record = sum(e["restarts"] for e in state["episodes"])
    unfinished = sum(not e["finished"] for e in state["episodes"])
    problems = [p for e in state["episodes"] for p in e["problems"]]
    twice = sum("twice" in p for p in problems)
    lost = sum("requested" in p or "trial sets differ" in p for p in problems)
    differ = sum(bool(e["differs_from_uninterrupted"]) for e in state["episodes"])
    order = ["start", *POINTS]
    lines = [f"`{state['command']}` ({state['machine']}; {state['started']}; wall {state['wall_s'] / 60:.1f} min)",
             "",
             f"Uninterrupted search: {state['reference']['num_samples']} trials in "
             f"{state['reference']['wall_s']:.1f} s "
             f"(kill moments drawn uniformly from [0, {state['reference']['wall_s']:.1f} s) of each run).", "",
             "| kills | searches | resumes that could not finish | lost trials | trials recorded twice | "
             "other disagreements | searches that differ from the uninterrupted one |",
             "|---|---|---|---|---|---|---|",
             f"| {len(kills)} | {len(state['episodes'])} | {unfinished} | {lost} | {twice} | "
             f"{len(problems) - twice - lost} | {differ} |", "",
             f"{before_record} kill(s) came before the search had written its record (its first seconds: imports, "
             f"checks, Ray's start): nothing existed to resume, and the same command without --resume started it.", "",
             "Kills per window (the last fault point the search had passed; `start`: none yet):", "",
             "| window | kills |", "|---|---|"]
    lines += [f"| {w} | {windows[w]} |" for w in order if windows[w]]
    return "\n".join(lines) + "\n"


@cli
def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=30, help="kills to reach in all (default 30)")
    p.add_argument("--kills-per-search", type=int, default=3, help="kills of one search before it resumes to its end")
    p.add_argument("--num-samples", type=int, default=5, help="trials per search (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--run", default="default", help="run name: OUT/benchmarks/crash_kills/RUN")
    p.add_argument("--out-dir", default=None, help="output root (default outputs/)")
    a = p.parse_args(argv)
    out = out_root(a.out_dir) / "benchmarks" / "crash_kills" / a.run
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "kills.json"
    m = machine()
    state = json.loads(saved.read_text()) if saved.exists() else {
        "command": a.command, "machine": f"{m['cpu']}, {m['cpus']} CPUs", "started": time.strftime("%Y-%m-%d"),
        "wall_s": 0.0, "episodes": []}
    t0 = time.time()
    if "reference" not in state:
        subprocess.run([sys.executable, "-m", "m2mdc.teacher", "--arch", "resnet18", "--dataset", "digits",
                        "--epochs", "5", "--out-dir", str(out)], cwd=REPO, check=True, capture_output=True)
        ref = Search(out, "uninterrupted", num_samples=a.num_samples)
        start = time.time()
        assert ref.run() == 0, ref.log()[-3000:]
        state["reference"] = {"num_samples": a.num_samples, "wall_s": time.time() - start,
                              "outcome": {str(k): list(v) for k, v in ref.outcome().items()}}
        write_json(saved, state)
    while sum(r["killed"] for e in state["episodes"] for r in e["runs"]) < a.kills:
        i = len(state["episodes"])
        rng = random.Random(a.seed * 100_003 + i)  # per search: a continued run draws what it would have
        # a search a stopped benchmark left half-done is abandoned (its record is not in kills.json), not reused
        name = f"killed-{i:03d}-{time.strftime('%H%M%S')}"
        state["episodes"].append(episode(out, name, state["reference"]["wall_s"], a.kills_per_search, rng,
                                         state["reference"]))
        state["wall_s"] += time.time() - t0
        t0 = time.time()
        write_json(saved, state)
    text = report(state)
    write_text(out / "report.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
