"""Search the accuracy-compute frontier of the compression pipeline under a GMACs budget.

    python search/frontier.py --budget-gmacs 0.02                      # CIFAR-100, ResNet-18, quick profile
    python search/frontier.py --budget-gmacs 0.02 --profile smoke --dataset digits
    mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db          # review the Pareto set

Ray Tune runs one compression plan per trial (search/trainable.py); Ray's OptunaSearch samples
the space (spaces/*.yaml) with a multi-objective sampler (max val top-1, min GMACs[, min
latency]); ASHA stops collapsing trials; MLflow holds one parent run and one run per trial, the
Pareto members tagged and their models attached. Outputs: OUT/search/NAME/ (Ray experiment,
Optuna SQLite study, pareto.csv / pareto.md / frontier.png, search.json).
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from m2mdc.errors import Parser, UserError, check_range, cli
from m2mdc.io import ensure_writable, out_root
from m2mdc.objectives import OBJECTIVE_SETS
from m2mdc.cli.args import add_data_args, add_teacher_args, recipe_from_args
from search.driver import PROFILES, SearchRequest, run_search

ASHA_STOP_FRACTION = 0.25  # a trial in the bottom quarter at a rung has collapsed (search/early_stop.py)


def build_parser() -> Parser:
    from search.optuna_search import SAMPLERS

    p = Parser(prog="python search/frontier.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-gmacs", type=float, required=True, help="hard GMACs budget per student (fvcore, 1 image)")
    add_teacher_args(p)
    add_data_args(p)
    g = p.add_argument_group("search")
    g.add_argument("--space", default=None, help="space name (spaces/NAME.yaml) or YAML path (default: the --arch's)")
    g.add_argument("--profile", default="quick", choices=PROFILES, help="smoke (tests), quick (CPU, ~15 min), "
                   "paper (paper epochs, for GPUs); default quick")
    g.add_argument("--num-samples", type=int, default=None, help="trials (default: the profile's)")
    g.add_argument("--kd-epochs", type=int, default=None, help="T of every KD repair (default: the profile's)")
    g.add_argument("--steps-per-epoch", type=int, default=None, help="batches per KD epoch, 0 = full passes "
                   "(default: the profile's)")
    g.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="tpe (default), nsga2, random (baseline)")
    g.add_argument("--objectives", default="acc-gmacs", choices=OBJECTIVE_SETS,
                   help="acc-gmacs (default) or acc-gmacs-latency (adds measured batch-1 CPU latency)")
    g.add_argument("--no-asha", action="store_true", help="run every trial to the end (no early stopping)")
    g.add_argument("--stop-fraction", type=float, default=ASHA_STOP_FRACTION,
                   help="ASHA rungs stop trials in this bottom share of val top-1 (default 0.25)")
    g.add_argument("--asha-min-trials", type=int, default=4,
                   help="trials recorded at a rung before it may stop any (default 4)")
    g.add_argument("--points", default=None, help="JSON file: a list of configurations to evaluate first")
    g.add_argument("--search-seed", type=int, default=0, help="seed of the sampler")
    o = p.add_argument_group("operations")
    o.add_argument("--name", default=None, help="search name (default frontier-ARCH-DATASET-bBUDGET)")
    o.add_argument("--resume", action="store_true", help="continue the interrupted search of that name")
    o.add_argument("--max-concurrent", type=int, default=1, help="trials at once (default 1)")
    o.add_argument("--cpus-per-trial", type=int, default=None, help="default: all CPUs of this machine")
    o.add_argument("--gpus-per-trial", type=float, default=0.0, help="default 0 (set 1 on a GPU machine)")
    o.add_argument("--address", default=None, help="join an existing Ray cluster (HOST:PORT, auto or ray://...; "
                   "default: $RAY_ADDRESS, else a private local instance on 127.0.0.1); artefacts must then live on "
                   "storage every node sees (--out-dir)")
    o.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default sqlite:///OUT/mlflow.db)")
    o.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (on 127.0.0.1)")
    o.add_argument("--quiet", action="store_true", help="no per-epoch lines from trials")
    return p


def _load_points(path: str | None, space) -> list[dict]:
    """Configurations to evaluate first: the knobs each names (flat ``knob/stage`` names or nested
    per-stage objects), the knob table's default for every other knob the space samples."""
    if not path:
        return []
    try:
        points = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--points {path} is not a readable JSON file ({e})") from None
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise UserError(f"--points {path} must hold a JSON list of configurations (objects)")
    from m2mdc.knobs import KNOBS
    from search.tracking import flat_config

    sampled = space.sampled_names()
    out = []
    for i, point in enumerate(points):
        flat = flat_config(point)
        unknown = sorted(set(flat) - set(space.params))
        if unknown:
            raise UserError(f"--points entry {i}: unknown {unknown}; the space's knobs are {', '.join(space.params)}")
        full = {}
        for name in sampled:
            knob = KNOBS[name.split("/")[0]]
            value = flat.get(name, knob.default)
            msg = knob.rule.message(f"--points entry {i}: {name}", value)
            if msg is not None:
                raise UserError(msg)
            full[name] = value
        out.append(full)
    return out


@cli
def main(argv=None):
    a = build_parser().parse_args(argv)
    prof = PROFILES[a.profile]
    check_range("--budget-gmacs", a.budget_gmacs, 0.0, math.inf, lo_open=True, hi_open=True, hint="e.g. --budget-gmacs 0.02")
    if a.epochs is None and prof.teacher_epochs is not None:
        a.epochs = prof.teacher_epochs
    num_samples = a.num_samples if a.num_samples is not None else prof.num_samples
    check_range("--num-samples", num_samples, 1, 10 ** 6)
    check_range("--max-concurrent", a.max_concurrent, 1, 10 ** 4)
    check_range("--stop-fraction", a.stop_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    check_range("--asha-min-trials", a.asha_min_trials, 1, 10 ** 6)
    kd_epochs = a.kd_epochs if a.kd_epochs is not None else prof.kd_epochs
    check_range("--kd-epochs", kd_epochs, 1, 10 ** 4)
    steps = prof.steps_per_epoch if a.steps_per_epoch is None else (a.steps_per_epoch or None)
    if steps is not None:
        check_range("--steps-per-epoch", steps, 1, 10 ** 7)
    cpus = a.cpus_per_trial or os.cpu_count() or 1
    check_range("--cpus-per-trial", cpus, 1, 10 ** 4)
    check_range("--gpus-per-trial", a.gpus_per_trial, 0.0, 64.0)
    recipe = recipe_from_args(a)

    from spaces import load_space

    space = load_space(a.space or a.arch, arch=a.arch)
    points = _load_points(a.points, space)
    from m2mdc.allocate import check_budget
    from m2mdc.cost import CostModel
    from m2mdc.data import load_dataset
    from m2mdc.models import get_adapter

    ds = load_dataset(a.dataset, a.data_dir, a.resolution, a.val_size, a.split_seed)
    adapter = get_adapter(a.arch)
    check_budget(CostModel(adapter, ds.num_classes, ds.resolution), a.budget_gmacs)

    root = ensure_writable(out_root(a.out_dir))
    name = a.name or f"frontier-{a.arch}-{ds.name}-b{a.budget_gmacs:g}"
    exp_dir = (root / "search" / name).resolve()
    meta_path = exp_dir / "search.json"
    identity = {"space_digest": space.digest, "arch": a.arch, "dataset": ds.name, "budget_gmacs": a.budget_gmacs,
                "profile": a.profile, "objectives": a.objectives, "sampler": a.sampler, "num_samples": num_samples,
                "kd_epochs": kd_epochs, "steps_per_epoch": steps, "teacher": repr(recipe)}
    meta = None
    if a.resume:
        if not meta_path.exists():
            raise UserError(f"nothing to resume: no search named {name} under {root / 'search'}; drop --resume")
        meta = json.loads(meta_path.read_text())
        changed = sorted(k for k, v in identity.items() if meta["identity"].get(k) != v)
        if changed:
            raise UserError(f"--resume of {name} with different settings ({', '.join(changed)}); resume with the "
                            f"original arguments or start a new search with --name")
    elif meta_path.exists():
        raise UserError(f"a search named {name} already exists in {exp_dir}; pass --resume to continue it or "
                        f"--name for a new one")
    from search.tracking import check_reachable, default_uri

    mlflow_uri = a.mlflow_uri or default_uri(root)
    check_reachable(mlflow_uri)
    from search.ray_cluster import check_reachable as check_ray, requested_address

    a.address = requested_address(a.address)
    check_ray(a.address)
    training = {"epochs": kd_epochs, "steps_per_epoch": steps}
    return run_search(SearchRequest(a, name, root, exp_dir, space, points, ds, recipe, prof,
                                    OBJECTIVE_SETS[a.objectives], num_samples, training, cpus, mlflow_uri, identity,
                                    meta))


def exit_without_final_gc(rc) -> None:
    """Exit skipping the interpreter's last garbage collection: it walks every object Ray, MLflow
    and torch created (3-4 s measured on 2 cores) only to free memory the OS reclaims anyway."""
    import gc

    gc.freeze()
    sys.exit(rc)


if __name__ == "__main__":
    exit_without_final_gc(main())
