"""What the search machinery costs: a frontier search over N fixed configurations versus running the
same N compression plans directly, one after another, in one process (same teacher cache, threads,
KD settings and saved models). Target: search / direct <= 1.10.

Both sides are timed end to end from a cached teacher: the direct side includes loading the data,
teacher, teacher outputs and MI scores once; the search side is the whole CLI process (Ray start,
MLflow and Optuna SQLite stores, one Ray worker per trial, the object-store copy of the shared
inputs, the Pareto report). The fixed part of that overhead is amortised over longer trials, so the
ratio depends on the trial length (--kd-epochs, --steps-per-epoch).

    python benchmarks/search_overhead.py --dataset digits --n 4 --kd-epochs 3 --steps-per-epoch 8
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m2mdc.data import load_dataset  # noqa: E402
from m2mdc.errors import Parser, cli  # noqa: E402
from m2mdc.pipeline import prepare_context  # noqa: E402
from m2mdc.teacher import TeacherRecipe  # noqa: E402
from search.trainable import SearchSetup, run_trial  # noqa: E402


def fixed_configs(n: int) -> list[dict]:
    """N distinct, deterministic M2M-DC configurations (no QAT: its ~25 s conversion would dominate)."""
    out = []
    for i in range(n):
        f = 0.5 + 0.4 * (i % 3) / 2
        out.append({"prune_ratio": 0.25 * (i % 3), "planes_keep": {s: f for s in ("layer1", "layer2", "layer3",
                                                                                   "layer4")},
                    "mid_keep": 0.5 + 0.1 * (i % 4), "order": "bpm", "signal": "bn", "alpha": 0.1, "beta": 0.1,
                    "kd_lr": 1e-4, "sparsity": 0.0})
    return out


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
    a = p.parse_args(argv)
    out = Path(a.out_dir or tempfile.mkdtemp(prefix="search-overhead-"))
    configs = fixed_configs(a.n)
    space = REPO / "tests" / "data" / "space-lean.yaml"
    torch.set_num_threads(a.threads)

    ds = load_dataset(a.dataset)
    prepare_context("resnet18", ds, TeacherRecipe(epochs=a.teacher_epochs), torch.device("cpu"), out, quiet=True)
    print(f"teacher cached under {out}; {a.n} configurations, KD T={a.kd_epochs}, {a.steps_per_epoch} batches/epoch, "
          f"{a.threads} threads", flush=True)

    t0 = time.perf_counter()
    ds = load_dataset(a.dataset)
    ctx = prepare_context("resnet18", ds, TeacherRecipe(epochs=a.teacher_epochs), torch.device("cpu"), out,
                          quiet=True)
    ctx.get_teacher_outputs()
    setup = SearchSetup(ctx, a.budget_gmacs, "fractions", {"epochs": a.kd_epochs, "steps_per_epoch": a.steps_per_epoch},
                        probe_samples=500 if a.dataset == "digits" else 5000, threads=a.threads, quiet=True)
    ctx.get_block_scores(10, setup.probe_samples)
    direct_vals = []
    for i, cfg in enumerate(configs):
        row = run_trial(dict(cfg, kl_weight=0.0, qat=False, tail_order="sq"), setup, report=lambda r: None,
                        out_dir=out / "direct" / str(i))
        direct_vals.append(row["val_top1"])
    direct = time.perf_counter() - t0
    print(f"direct: {direct:.1f} s  (val top-1 {', '.join(f'{v:.2f}' for v in direct_vals)})", flush=True)

    points = out / "points.json"
    points.write_text(json.dumps(configs))
    profile = "smoke" if a.dataset == "digits" else "quick"
    cmd = [sys.executable, str(REPO / "search" / "frontier.py"), "--budget-gmacs", str(a.budget_gmacs),
           "--dataset", a.dataset, "--profile", profile, "--epochs", str(a.teacher_epochs), "--space", str(space),
           "--points", str(points), "--num-samples", str(a.n), "--no-asha", "--sampler", "random",
           "--kd-epochs", str(a.kd_epochs), "--steps-per-epoch", str(a.steps_per_epoch),
           "--cpus-per-trial", str(a.threads), "--out-dir", str(out), "--name", f"overhead-{int(time.time())}",
           "--quiet"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    search = time.perf_counter() - t0
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
        return 1
    print(f"search: {search:.1f} s")
    print(f"search / direct = {search / direct:.3f}  (overhead {100 * (search / direct - 1):.1f}%, target <= 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
