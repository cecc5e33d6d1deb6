"""Many processes on one SQLite tracking store: does SQLite's write-ahead log (WAL) help?

    python benchmarks/shared_store.py --writers 4 --runs 10 --repeats 3

Each repeat creates a new store and starts, at the same moment, ``--writers`` processes that write what a
search's driver writes per trial (a run, its parameters, one metric batch per epoch, the final batch of
metrics and tags, its end), and one reader that does what a review does meanwhile (search_runs over the
experiment, again and again), all through search/mlflow_store.py's client (the file lock on creation, the
bounded retries on a busy store). Once with the WAL journal (the default) and once with SQLite's rollback
journal (``M2MDC_MLFLOW_WAL=0``). Reports the wall time of the slowest writer, the reader's queries per
second, the retries the writers needed, and the calls that failed after all retries (must be 0), each as
median and range over the repeats. Writes OUT/benchmarks/shared_store/report.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m2mdc.arch_latency import machine  # noqa: E402
from m2mdc.errors import Parser, cli  # noqa: E402
from m2mdc.io import out_root, write_json, write_text  # noqa: E402
from search import mlflow_store  # noqa: E402

EPOCHS = 5


def writer(uri: str, experiment: str, runs: int, start_at: float) -> dict:
    """What a search's driver writes for ``runs`` trials, as fast as the store takes it."""
    # mlflow costs ~1.2 s to import (python -X importtime): only the writer processes pay it, not --help
    from mlflow.entities import Metric, Param, RunTag

    while time.time() < start_at:
        time.sleep(0.005)
    t0 = time.perf_counter()
    failed = 0
    client = mlflow_store.open_client(uri)
    try:
        exp = client.get_experiment_by_name(experiment) or client.get_experiment(client.create_experiment(experiment))
    except Exception:  # noqa: BLE001 - another writer created it between the two calls
        exp = client.get_experiment_by_name(experiment)
    for i in range(runs):
        try:
            run = client.create_run(exp.experiment_id, tags={"role": "trial", "trial_id": f"{os.getpid()}-{i}"})
            rid = run.info.run_id
            client.log_batch(rid, params=[Param(f"p{k}", str(k)) for k in range(12)])
            for step in range(1, EPOCHS + 1):
                now = int(time.time() * 1000)
                client.log_batch(rid, metrics=[Metric("val_top1", 50.0 + step, now, step), Metric("gmacs", 0.02, now, step)])
            now = int(time.time() * 1000)
            client.log_batch(rid, metrics=[Metric(f"m{k}", float(k), now, EPOCHS + 1) for k in range(10)],
                             tags=[RunTag("status", "completed"), RunTag("final_logged", "true")])
            client.set_terminated(rid, "FINISHED")
        except Exception:  # noqa: BLE001 - counted: a call that failed after all retries
            failed += 1
    return {"seconds": time.perf_counter() - t0, "retries": mlflow_store.RetryingClient.retried, "failed": failed}


def reader(uri: str, experiment: str, seconds: float, start_at: float) -> dict:
    while time.time() < start_at:
        time.sleep(0.005)
    client = mlflow_store.open_client(uri)
    queries, failed, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                client.search_runs([exp.experiment_id], max_results=1000)
            queries += 1
        except Exception:  # noqa: BLE001
            failed += 1
    return {"queries_per_s": queries / seconds, "failed": failed, "retries": mlflow_store.RetryingClient.retried}


def one_repeat(writers: int, runs: int, wal: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="shared-store-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    start_at = time.time() + 8  # after every process has imported MLflow
    env = {**os.environ, "M2MDC_MLFLOW_WAL": "1" if wal else "0"}
    role = [[sys.executable, __file__, "--role", "writer", "--uri", uri, "--runs", str(runs), "--start-at",
             str(start_at)] for _ in range(writers)]
    role.append([sys.executable, __file__, "--role", "reader", "--uri", uri, "--seconds", "10", "--start-at",
                 str(start_at)])
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) for cmd in role]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]

    with sqlite3.connect(folder / "mlflow.db") as con:
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        runs_in = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    w, r = outs[:-1], outs[-1]
    return {"journal": mode, "integrity": ok, "runs": runs_in, "slowest_writer_s": max(x["seconds"] for x in w),
            "writer_retries": sum(x["retries"] for x in w), "writer_failed": sum(x["failed"] for x in w),
            "reader_queries_per_s": r["queries_per_s"], "reader_failed": r["failed"]}


def spread(values) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


@cli
def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writers", type=int, default=4, help="writer processes (default 4)")
    p.add_argument("--runs", type=int, default=10, help="trial runs each writer logs (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="new stores per journal mode (default 3)")
    p.add_argument("--out-dir", default=None, help="output root (default outputs/)")
    p.add_argument("--role", choices=("writer", "reader"), default=None, help=argparse_hidden())
    p.add_argument("--uri", default=None, help=argparse_hidden())
    p.add_argument("--seconds", type=float, default=10, help=argparse_hidden())
    p.add_argument("--start-at", type=float, default=0, help=argparse_hidden())
    a = p.parse_args(argv)
    if a.role == "writer":
        print(json.dumps(writer(a.uri, "shared", a.runs, a.start_at)))
        return 0
    if a.role == "reader":
        print(json.dumps(reader(a.uri, "shared", a.seconds, a.start_at)))
        return 0

    rows = {}
    for wal in (True, False):
        reps = []
        for i in range(a.repeats):
            reps.append(one_repeat(a.writers, a.runs, wal))
            print(f"[{'wal' if wal else 'rollback'} {i + 1}/{a.repeats}] {reps[-1]}", flush=True)
        rows["wal" if wal else "rollback journal"] = reps
    m = machine()
    lines = [f"`{a.command}` ({m['cpu']}, {m['cpus']} CPUs; {time.strftime('%Y-%m-%d')}): {a.writers} writers x "
             f"{a.runs} trial runs ({EPOCHS} epochs each) and one reader, on a new SQLite store; median (range) of "
             f"{a.repeats} repeats", "",
             "| journal | slowest writer (s) | reader queries/s | writer retries | failed calls | runs stored | "
             "integrity |", "|---|---|---|---|---|---|---|"]
    for name, reps in rows.items():
        lines.append(f"| {name} ({reps[0]['journal']}) | {spread([r['slowest_writer_s'] for r in reps])} | "
                     f"{spread([r['reader_queries_per_s'] for r in reps])} | "
                     f"{spread([r['writer_retries'] for r in reps])} | "
                     f"{sum(r['writer_failed'] + r['reader_failed'] for r in reps)} | "
                     f"{sorted({r['runs'] for r in reps})} | {sorted({r['integrity'] for r in reps})} |")
    text = "\n".join(lines) + "\n"
    out = out_root(a.out_dir) / "benchmarks" / "shared_store"
    write_json(out / "report.json", {"command": a.command, "rows": rows})
    write_text(out / "report.md", text)
    print(text)
    return 0


def argparse_hidden():
    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
