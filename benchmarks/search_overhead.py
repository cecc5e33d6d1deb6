"""What the search machinery costs: a frontier search over N fixed configurations versus running the
same N compression plans directly, one after another, in one process (same teacher cache, threads,
KD settings and saved models). Target: search / direct <= 1.10.

Both sides are timed as whole processes (interpreter start to exit) from a cached teacher: the
direct side (this script with --side direct) imports torch, loads the data, teacher, teacher outputs
and MI scores once and runs the plans; the search side is the frontier CLI (its extra imports, Ray
start, MLflow and Optuna SQLite stores, the object-store copy of the shared inputs, the Ray worker,
the Pareto report). The fixed part of that overhead is amortised over longer trials, so the ratio
depends on the trial length (--kd-epochs, --steps-per-epoch).

    python benchmarks/search_overhead.py --dataset cifar100 --n 4 --kd-epochs 2 --steps-per-epoch 40 \
        --teacher-epochs 15 --out-dir outputs          # the quick profile's trial length (README figure)
    python benchmarks/search_overhead.py --dataset digits --n 4 --kd-epochs 3 --steps-per-epoch 20
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m2mdc.allocate import check_budget  # noqa: E402
from m2mdc.cost import CostModel  # noqa: E402
from m2mdc.data import load_dataset, num_classes_of  # noqa: E402
from m2mdc.errors import Parser, check_range, cli  # noqa: E402
from m2mdc.context import prepare_context  # noqa: E402
from m2mdc.io import write_json  # noqa: E402
from m2mdc.knobs import setting_config  # noqa: E402
from m2mdc.models import get_adapter  # noqa: E402
from m2mdc.teacher import TeacherRecipe  # noqa: E402
from search.frontier import exit_without_final_gc  # noqa: E402
from search.trainable import SearchSetup, run_trial  # noqa: E402


def fixed_configs(n: int) -> list[dict]:
    """N distinct, deterministic M2M-DC configurations (no QAT: its ~25 s conversion would dominate);
    every knob not named takes its default."""
    adapter = get_adapter("resnet18")
    stages = adapter.stages(adapter.base_model(10))
    out = []
    for i in range(n):
        f = 0.5 + 0.4 * (i % 3) / 2
        out.append(setting_config({"block_prune.ratio": 0.25 * (i % 3), "planes.keep": {s: f for s in stages},
                                   "mid.keep": 0.5 + 0.1 * (i % 4)}))
    return out


def run_direct(a, out: Path, configs: list[dict]) -> list[dict]:
    """The baseline: the same plans, one after another, in this process."""
    ds = load_dataset(a.dataset)
    ctx = prepare_context("resnet18", ds, TeacherRecipe(epochs=a.teacher_epochs), torch.device("cpu"), out,
                          quiet=True)
    ctx.get_teacher_outputs()
    setup = SearchSetup(ctx, a.budget_gmacs, "fractions", {"epochs": a.kd_epochs, "steps_per_epoch": a.steps_per_epoch},
                        probe_samples=500 if a.dataset == "digits" else 5000, threads=a.threads, quiet=True)
    ctx.get_block_scores(10, setup.probe_samples)
    rows = []
    for i, cfg in enumerate(configs):
        row = run_trial(dict(cfg, kl_weight=0.0, qat=False, tail_order="sq"), setup, report=lambda r: None,
                        out_dir=out / "direct" / str(i))
        rows.append({k: row[k] for k in ("val_top1", "train_seconds")})
    return rows


def search_rows(exp_dir: Path) -> list[dict]:
    """Each trial's final report, from Ray's per-trial result.json."""
    rows = []
    for f in sorted(exp_dir.glob("trial_*/result.json")):
        last = json.loads(f.read_text().strip().splitlines()[-1])
        rows.append({k: last[k] for k in ("val_top1", "train_seconds")})
    return rows


def _vals(rows: list[dict]) -> str:
    return ", ".join(f"{r['val_top1']:.2f}" for r in rows)


def timed(cmd: list[str]) -> tuple[float, str]:
    """Wall seconds and stdout of ``cmd``; a failed side ends the benchmark (exit 1) with its output tail."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
        sys.exit(1)
    return time.perf_counter() - t0, r.stdout


@cli
def main(argv=None):
    p = Parser(prog="benchmarks/search_overhead.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--n", type=int, default=4, help="configurations (trials)")
    p.add_argument("--kd-epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=8)
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--budget-gmacs", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", default=None, help="default: a temporary folder")
    p.add_argument("--side", choices=("both", "direct"), default="both", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for flag in ("n", "kd_epochs", "steps_per_epoch", "teacher_epochs", "threads"):
        check_range(f"--{flag.replace('_', '-')}", getattr(a, flag), 1, 10 ** 6)

    check_budget(CostModel(get_adapter("resnet18"), num_classes_of(a.dataset), 32), a.budget_gmacs)
    if a.side == "both":
        load_dataset(a.dataset)  # data missing offline: one line, before anything is written
    out = Path(a.out_dir or tempfile.mkdtemp(prefix="search-overhead-"))
    configs = fixed_configs(a.n)
    space = REPO / "tests" / "data" / "space-lean.yaml"
    torch.set_num_threads(a.threads)
    if a.side == "direct":
        print(json.dumps(run_direct(a, out, configs)))
        return 0

    ds = load_dataset(a.dataset)
    prepare_context("resnet18", ds, TeacherRecipe(epochs=a.teacher_epochs), torch.device("cpu"), out, quiet=True)
    print(f"teacher cached under {out}; {a.n} configurations, KD T={a.kd_epochs}, {a.steps_per_epoch} batches/epoch, "
          f"{a.threads} threads", flush=True)
    common = ["--dataset", a.dataset, "--n", str(a.n), "--kd-epochs", str(a.kd_epochs), "--steps-per-epoch",
              str(a.steps_per_epoch), "--teacher-epochs", str(a.teacher_epochs), "--budget-gmacs", str(a.budget_gmacs),
              "--threads", str(a.threads), "--out-dir", str(out)]
    direct, stdout = timed([sys.executable, str(Path(__file__).resolve()), "--side", "direct", *common])
    direct_rows = json.loads(stdout.strip().splitlines()[-1])
    print(f"direct: {direct:.1f} s  (val top-1 {_vals(direct_rows)})", flush=True)

    points = out / "points.json"
    write_json(points, configs)
    profile = "smoke" if a.dataset == "digits" else "quick"
    name = f"overhead-{int(time.time())}"
    cmd = [sys.executable, str(REPO / "search" / "frontier.py"), "--budget-gmacs", str(a.budget_gmacs),
           "--dataset", a.dataset, "--profile", profile, "--epochs", str(a.teacher_epochs), "--space", str(space),
           "--points", str(points), "--no-seed-baselines", "--num-samples", str(a.n), "--no-asha", "--sampler", "random",
           "--kd-epochs", str(a.kd_epochs), "--steps-per-epoch", str(a.steps_per_epoch),
           "--cpus-per-trial", str(a.threads), "--out-dir", str(out), "--name", name,
           "--quiet"]
    search, _ = timed(cmd)
    rows = search_rows(out / "search" / name)
    print(f"search: {search:.1f} s  (val top-1 {_vals(rows)}, in trial-id order)")
    # Where the difference goes: the machinery around trials, or slower trials (a driver and Ray's
    # daemons sharing the cores with the trial's threads).
    d_train, s_train = (sum(r["train_seconds"] for r in rs) for rs in (direct_rows, rows))
    print(f"plan time inside trials: direct {d_train:.1f} s, search {s_train:.1f} s; outside them: direct "
          f"{direct - d_train:.1f} s, search {search - s_train:.1f} s")
    print(f"search / direct = {search / direct:.3f}  (overhead {100 * (search / direct - 1):.1f}%, target <= 10%)")
    return 0


if __name__ == "__main__":
    exit_without_final_gc(main())  # as the frontier CLI exits, so both sides end the same way
