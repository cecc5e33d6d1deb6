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

import argparse
import gc
import json
import math
import os
import sys
from pathlib import Path

from m2mdc.allocate import check_budget
from m2mdc.arch_latency import ArchLatency, machine
from m2mdc.cli.args import add_data_args, add_teacher_args, teacher_and_data, teacher_from_args
from m2mdc.compiler import (BASELINES, LATENCY_BASELINES, SHALLOWEST, compile_config, dry_target, fastest_configs,
                            shallowest_config)
from m2mdc.config import flatten
from m2mdc.cost import CostModel
from m2mdc.data import num_classes_of
from m2mdc.device import pick_device
from m2mdc.errors import Parser, UserError, check_range, cli
from m2mdc.io import ensure_writable, out_root
from m2mdc.knobs import KNOBS
from m2mdc.models import get_adapter
from m2mdc.objectives import OBJECTIVE_SETS
from search.driver import PROFILES, SEARCH_RECORD, SearchRequest, run_search, search_folder
from search.optuna_search import SAMPLERS, origin_label
from search.ray_cluster import check_reachable as check_ray, requested_address
from search.tracking import check_experiment, check_reachable, default_uri
from spaces import load_space

ASHA_STOP_FRACTION = 0.25  # a trial in the bottom quarter at a rung has collapsed (search/early_stop.py)


def build_parser() -> Parser:
    p = Parser(prog="python search/frontier.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-gmacs", type=float, default=None, help="hard GMACs budget per student (fvcore, 1 image); "
                   "required unless --budget-ms is given")
    lat = p.add_argument_group("latency budget")
    lat.add_argument("--budget-ms", type=float, default=None,
                     help="hard latency budget per student: milliseconds per batch of --latency-batch images through "
                     "the model as it ships (inductor-compiled FP32, or INT8 where the configuration has QAT) on this "
                     "CPU, measured before training; configurations over it are width-scaled onto it or rejected")
    lat.add_argument("--latency-batch", type=int, default=1, help="batch size latency is timed at (default 1; at "
                     "32x32 batch-1 time is mostly per-call overhead, a larger batch separates architectures)")
    lat.add_argument("--latency-threads", type=int, default=None,
                     help="threads latency is timed with (default: --cpus-per-trial; at most that)")
    lat.add_argument("--remeasure", action="store_true", help="with --resume on another CPU model: re-measure "
                     "latencies on this machine instead of refusing")
    add_teacher_args(p)
    add_data_args(p)
    g = p.add_argument_group("search")
    g.add_argument("--space", default=None, help="space name (spaces/NAME.yaml) or YAML path (default: the --arch's)")
    g.add_argument("--profile", default="quick", choices=PROFILES, help="smoke (tests), quick (CPU, 24 trials: ~25 min of short trials on CIFAR-100 at 2 cores, then the promotions), "
                   "paper (paper epochs, for GPUs); default quick")
    g.add_argument("--num-samples", type=int, default=None, help="trials (default: the profile's)")
    g.add_argument("--kd-epochs", type=int, default=None, help="T of every KD repair (default: the profile's)")
    g.add_argument("--steps-per-epoch", type=int, default=None, help="batches per KD epoch, 0 = full passes "
                   "(default: the profile's)")
    g.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="tpe (default), nsga2, random (baseline)")
    g.add_argument("--objectives", default=None, choices=OBJECTIVE_SETS,
                   help="acc-gmacs (default) or acc-gmacs-latency (adds the measured CPU latency at --latency-batch; "
                   "the default with --budget-ms)")
    g.add_argument("--no-asha", action="store_true", help="run every trial to the end (no early stopping)")
    g.add_argument("--stop-fraction", type=float, default=ASHA_STOP_FRACTION,
                   help="ASHA rungs stop trials in this bottom share of val top-1 (default 0.25)")
    g.add_argument("--asha-min-trials", type=int, default=4,
                   help="trials recorded at a rung before it may stop any (default 4)")
    g.add_argument("--points", default=None, help="JSON file: a list of configurations to evaluate first (after "
                   "the seeded baselines)")
    g.add_argument("--seed-baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="start with the baselines a user would otherwise run (uniform width, Torch-Pruning-like local "
                   "and global, M2M-DC at the budget) and the space's deepest block cut at full width; they are never "
                   "stopped early (default on)")
    g.add_argument("--search-seed", type=int, default=0, help="seed of the sampler")
    g.add_argument("--projection", default="both", choices=("both", "down"), help="both (default): every trial's "
                   "widths are scaled onto its cost target (budget x cost_target), up towards the teacher's as well "
                   "as down; down: only configurations over it are scaled (the behaviour before cost targets)")
    g.add_argument("--promote", type=int, default=None, help="after the trials, the K best (by --promote-by) "
                   "of each cost band are trained again at the long budget, 8 full KD epochs, and the front is read "
                   "at the highest fidelity each member reached (default: the profile's, 1; smoke 0; 0 = none)")
    g.add_argument("--promote-by", default="adaptive_bn", choices=["adaptive_bn", "short"],
                   help="what ranks a band's trials for promotion: adaptive_bn (default: val right after the edits "
                   "and BN recalibration, which ordered architectures within a band closest to the long budget in "
                   "analysis/proxy_depth.py) or short (the short repair's val)")
    g.add_argument("--bands", type=int, default=3, help="cost bands promotion picks from, equal on a log scale "
                   "between 0.3 and 1.0 of the budget (default 3: around 0.3, 0.56 and 1.0)")
    o = p.add_argument_group("operations")
    o.add_argument("--name", default=None, help="search name (default frontier-ARCH-DATASET-bBUDGET)")
    o.add_argument("--resume", action="store_true", help="continue the interrupted search of that name")
    o.add_argument("--max-concurrent", type=int, default=1, help="trials at once (default 1)")
    o.add_argument("--cpus-per-trial", type=int, default=None, help="default: all CPUs of this machine")
    o.add_argument("--gpus-per-trial", type=float, default=None, help="GPUs each trial gets, fractions allowed "
                   "(default: 1 when --device resolves to CUDA, else 0)")
    o.add_argument("--address", default=None, help="join an existing Ray cluster (HOST:PORT, auto or ray://...; "
                   "default: $RAY_ADDRESS, else a private local instance on 127.0.0.1); artefacts must then live on "
                   "storage every node sees (--out-dir)")
    o.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default sqlite:///OUT/mlflow.db)")
    o.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (on 127.0.0.1)")
    o.add_argument("--quiet", action="store_true", help="no per-epoch lines from trials")
    o.add_argument("--verbose", action="store_true", help="also Ray Tune's status table (every 60 s) and "
                   "its per-trial result lines; by default one line per trial start and end and a progress bar")
    return p


def _load_points(path: str | None, space) -> list[dict]:
    """Configurations to evaluate first, from a JSON file."""
    if not path:
        return []
    try:
        points = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--points {path} is not a readable JSON file ({e})") from None
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise UserError(f"--points {path} must hold a JSON list of configurations (objects)")
    return [project_point(point, space, f"--points entry {i}") for i, point in enumerate(points)]


def project_point(point: dict, space, where: str) -> dict:
    """A configuration as the sampler sees it: the space's sampled knobs, each from ``point`` (flat
    ``knob/stage`` names, nested per-stage objects, or one value for every stage), else the knob
    table's default; knobs the space fixes keep the space's value."""
    flat = flatten(point)
    for name, value in list(flat.items()):  # one value for a knob the space samples per stage
        if name not in space.params and any(p.startswith(name + "/") for p in space.params):
            del flat[name]
            flat.update({p: value for p in space.params if p.startswith(name + "/")})
    unknown = sorted(set(flat) - set(space.params))
    if unknown:
        raise UserError(f"{where}: unknown {unknown}; the space's knobs are {', '.join(space.params)}")
    out = {}
    for name in space.sampled_names():
        knob = KNOBS[name.split("/")[0]]
        value = flat.get(name, knob.default)
        msg = knob.rule.message(f"{where}: {name}", value)
        if msg is not None:
            raise UserError(msg)
        out[name] = value
    return out


def seeded_points(space, latency: bool = False) -> tuple[dict[str, dict], list[str]]:
    """The baselines a user would otherwise run (m2mdc.compiler.BASELINES, and with a latency budget
    LATENCY_BASELINES: the same pruning shipped as INT8), then the space's deepest block cut at full
    width (m2mdc.compiler.SHALLOWEST, the search's own prior), as the search's first trials: at an equal
    trial budget the front can then never be worse than them on val. A point the space cannot express
    (a value outside a knob's range or choices, or a knob the space fixes at another value) is not bent
    into a different configuration: it is skipped, and the reason returned."""
    if space.mode != "fractions":
        return {}, [f"seeded baselines: none in a {space.mode!r} space (they are fractions configurations)"]
    points, skipped = {}, []
    seeds = {**BASELINES, **(LATENCY_BASELINES if latency else {})}
    shallowest = shallowest_config(space.params)
    if shallowest is not None:
        seeds[SHALLOWEST] = shallowest
    else:
        skipped.append(f"seeded point {SHALLOWEST!r} skipped: the space removes no blocks (prune_ratio 0)")
    for name, cfg in seeds.items():
        flat = flatten(cfg)
        for knob, value in list(flat.items()):  # one value for a knob the space holds per stage
            if knob not in space.params and any(p.startswith(knob + "/") for p in space.params):
                del flat[knob]
                flat.update({p: value for p in space.params if p.startswith(knob + "/")})
        outside = [f"{k}={v!r}" for k, v in flat.items() if k in space.params and not space.params[k].admits(v)]
        if outside:
            skipped.append(f"seeded point {name!r} skipped: the space cannot take {', '.join(outside)}")
            continue
        points[name] = project_point(cfg, space, f"seeded point {name!r}")
    return points, skipped


def check_latency_budget(a, space, cost, cache_dir=None):
    """UserError unless ``--budget-ms`` is at least the latency of the fastest configuration the space can
    build: its largest block-prune ratio, every width at its minimum (one channel per group), INT8 too when
    the space samples QAT. Measured here (two compiles, before any teacher training); returns the
    measurements (read from ``cache_dir`` when there), to keep once the search starts."""
    if space.mode != "fractions":
        raise UserError(f"--budget-ms needs a fractions space (its widths can be scaled onto the budget); "
                        f"{space.source} is a {space.mode!r} space")
    target = dry_target(a.arch, cost.num_classes, cost.resolution)
    oracle = ArchLatency(target.adapter, cost.num_classes, cost.resolution, batch=a.latency_batch,
                         threads=a.latency_threads, cache_dir=cache_dir, write=False)
    configs = fastest_configs(space.params)
    print(f"[latency] budget {a.budget_ms:g} ms at batch {a.latency_batch}, {a.latency_threads} thread(s); timing "
          f"the fastest configuration the space can build ({'FP32 and INT8' if len(configs) > 1 else 'one format'}, "
          f"compiled as shipped) ...", flush=True)
    fastest = None
    for config in configs:
        plan = compile_config(config, target)
        int8 = any(s["step"] == "qat" for s in plan.plan)
        t = oracle(plan.keep_cfg, int8)
        if fastest is None or t["ms"] < fastest[0]["ms"]:
            fastest = (t, int8, plan.gmacs)
    t, int8, gmacs = fastest
    if a.budget_ms < t["ms"]:
        raise UserError(f"--budget-ms {a.budget_ms:g} is below the fastest configuration the space can build: "
                        f"{t['ms']:.2f} ms ±{t['spread_pct']:.0f}% at batch {a.latency_batch} ({'INT8' if int8 else 'FP32'}, "
                        f"{gmacs:.2g} GMACs, {a.latency_threads} thread(s), {t['backend']}); raise --budget-ms")
    print(f"[latency] fastest buildable: {t['ms']:.2f} ms ±{t['spread_pct']:.0f}% ({'INT8' if int8 else 'FP32'}, "
          f"{gmacs:.2g} GMACs, {t['backend']})", flush=True)
    return oracle


def gpus_per_trial(device: str, requested: float | None) -> float:
    """Trials run where the hardware is: a GPU each when the device is CUDA, unless told otherwise;
    never trials on the CPU beside a driver on CUDA (they would disagree on the device)."""
    cuda = pick_device(device).type == "cuda"
    gpus = (1.0 if cuda else 0.0) if requested is None else requested
    check_range("--gpus-per-trial", gpus, 0.0, 64.0)
    if gpus > 0 and not cuda:
        raise UserError(f"--gpus-per-trial {gpus:g} but the device is the CPU (--device {device}); drop it or pass "
                        f"--device cuda on a machine with CUDA")
    if cuda and gpus == 0:
        raise UserError("--gpus-per-trial 0 with a CUDA device: trials would train on the CPU while the teacher and "
                        "its outputs live on the GPU; pass --device cpu to run everything on the CPU")
    return gpus


@cli
def main(argv=None):
    return run_search(search_request(build_parser().parse_args(argv)))


def search_request(a, data: tuple | None = None) -> SearchRequest:
    """The search the parsed flags describe, every input checked before anything starts. ``data``: a
    (teacher source, m2mdc.data.Dataset) already built (search.api: a user's module and datasets), in
    place of the one --teacher / --dataset name."""
    prof = PROFILES[a.profile]
    if a.budget_gmacs is None and a.budget_ms is None:
        raise UserError("no budget: pass --budget-gmacs (e.g. 0.02) and/or --budget-ms (e.g. 1.5)")
    if a.budget_gmacs is not None:
        check_range("--budget-gmacs", a.budget_gmacs, 0.0, math.inf, lo_open=True, hi_open=True,
                    hint="e.g. --budget-gmacs 0.02")
    a.objectives = a.objectives or ("acc-gmacs-latency" if a.budget_ms is not None else "acc-gmacs")
    if a.budget_ms is not None:
        check_range("--budget-ms", a.budget_ms, 0.0, math.inf, lo_open=True, hi_open=True, hint="e.g. --budget-ms 1.5")
        if "latency_ms" not in OBJECTIVE_SETS[a.objectives]:
            raise UserError(f"--budget-ms needs latency among the objectives, but --objectives {a.objectives} has "
                            f"none; drop --objectives or pass --objectives acc-gmacs-latency")
    check_range("--latency-batch", a.latency_batch, 1, 4096)
    if a.epochs is None and prof.teacher_epochs is not None and not a.teacher:
        a.epochs = prof.teacher_epochs
    num_samples = a.num_samples if a.num_samples is not None else prof.num_samples
    check_range("--num-samples", num_samples, 1, 10 ** 6)
    check_range("--max-concurrent", a.max_concurrent, 1, 10 ** 4)
    check_range("--stop-fraction", a.stop_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    check_range("--asha-min-trials", a.asha_min_trials, 1, 10 ** 6)
    a.promote = prof.promote if a.promote is None else a.promote
    check_range("--promote", a.promote, 0, 1000)
    check_range("--bands", a.bands, 1, 100)
    kd_epochs = a.kd_epochs if a.kd_epochs is not None else prof.kd_epochs
    check_range("--kd-epochs", kd_epochs, 1, 10 ** 4)
    steps = prof.steps_per_epoch if a.steps_per_epoch is None else (a.steps_per_epoch or None)
    if steps is not None:
        check_range("--steps-per-epoch", steps, 1, 10 ** 7)
    cpus = a.cpus_per_trial or os.cpu_count() or 1
    check_range("--cpus-per-trial", cpus, 1, 10 ** 4)
    a.latency_threads = a.latency_threads or cpus
    check_range("--latency-threads", a.latency_threads, 1, cpus, hint="timing must not use more threads than a trial "
                "holds (--cpus-per-trial)")
    a.gpus_per_trial = gpus_per_trial(a.device, a.gpus_per_trial)
    teacher_from_args(a)  # completes --arch with its stem

    space = load_space(a.space or a.arch, arch=a.arch)
    seeded, skipped = seeded_points(space, latency=a.budget_ms is not None) if a.seed_baselines else ({}, [])
    given = _load_points(a.points, space)
    if len(given) > num_samples:
        raise UserError(f"--points holds {len(given)} configurations but --num-samples is {num_samples}; raise "
                        f"--num-samples to at least {len(given)}")
    fit = num_samples - len(given)  # a point the trial budget cannot run would wait in the study forever
    skipped += [f"seeded point {n!r} skipped: --num-samples {num_samples} leaves no trial for it"
                for n in list(seeded)[fit:]]

    origins = [origin_label("prior" if n == SHALLOWEST else "seeded baseline", n) for n in list(seeded)[:fit]]
    origins += [origin_label("given", f"--points entry {i}") for i in range(len(given))]
    seeded = list(seeded.values())[:fit]
    for line in skipped:
        print(line, flush=True)
    points = seeded + given

    num_classes = data[1].num_classes if data else num_classes_of(a.dataset, a.data_dir)
    cost = CostModel(get_adapter(a.arch), num_classes, a.resolution)
    gmacs_given = a.budget_gmacs is not None
    if gmacs_given:
        check_budget(cost, a.budget_gmacs)
    else:  # a latency budget alone: MACs are unconstrained (the teacher's own GMACs bound every student)
        a.budget_gmacs = cost.full_gmacs
    recipe, ds = data or teacher_and_data(a, search=True)

    root = ensure_writable(out_root(a.out_dir), "make it writable, then run the same command again" if a.resume
                           else "pass a writable --out-dir")
    budgets = ([f"b{a.budget_gmacs:g}"] if gmacs_given else []) + (
        [f"{a.budget_ms:g}ms-bs{a.latency_batch}"] if a.budget_ms is not None else [])
    name = a.name or f"frontier-{a.arch}-{ds.name}-{'-'.join(budgets)}"
    exp_dir = search_folder(root, name)
    meta_path = exp_dir / SEARCH_RECORD
    identity = {"space_digest": space.digest, "arch": a.arch, "dataset": ds.name, "budget_gmacs": a.budget_gmacs,
                "profile": a.profile, "objectives": a.objectives, "sampler": a.sampler, "num_samples": num_samples,
                "kd_epochs": kd_epochs, "steps_per_epoch": steps, "teacher": repr(recipe),
                "projection": a.projection, "promote": a.promote, "bands": a.bands}
    if a.budget_ms is not None:
        identity.update(budget_ms=a.budget_ms, latency_batch=a.latency_batch, latency_threads=a.latency_threads,
                        latency_cpu=machine()["cpu"])
    meta = None
    if a.resume:
        if not meta_path.exists():
            raise UserError(f"nothing to resume: no search named {name} under {root / 'search'}; drop --resume")
        meta = json.loads(meta_path.read_text())
        was_cpu = meta["identity"].get("latency_cpu")
        if a.budget_ms is not None and was_cpu != identity["latency_cpu"]:
            if not a.remeasure:
                raise UserError(f"{name}'s latencies were measured on {was_cpu!r}, this CPU is "
                                f"{identity['latency_cpu']!r}; resume on that machine, or pass --remeasure to "
                                f"re-measure every latency here (the finished trials keep their old figures)")
            meta["identity"]["latency_cpu"] = identity["latency_cpu"]
        changed = sorted(k for k, v in identity.items() if meta["identity"].get(k) != v)
        if changed:
            raise UserError(f"--resume of {name} with different settings ({', '.join(changed)}); resume with the "
                            f"original arguments or start a new search with --name")
    elif meta_path.exists():
        raise UserError(f"a search named {name} already exists in {exp_dir}; pass --resume to continue it or "
                        f"--name for a new one")
    latency_check = check_latency_budget(a, space, cost, root / "latency") if a.budget_ms is not None else None

    mlflow_uri = a.mlflow_uri or default_uri(root)
    check_reachable(mlflow_uri)
    check_experiment(mlflow_uri, name)

    a.address = requested_address(a.address)
    check_ray(a.address)
    training = {"epochs": kd_epochs, "steps_per_epoch": steps}
    if latency_check is not None:
        latency_check.save_to(root / "latency")  # the startup measurements, kept now that the search starts
    return SearchRequest(a, name, root, exp_dir, space, points, ds, recipe, prof, OBJECTIVE_SETS[a.objectives],
                         num_samples, training, cpus, mlflow_uri, identity, meta, seeded=len(seeded),
                         point_origins=origins)


def exit_without_final_gc(rc) -> None:
    """Exit skipping the interpreter's last garbage collection: it walks every object Ray, MLflow
    and torch created (3-4 s measured on 2 cores) only to free memory the OS reclaims anyway."""
    gc.freeze()
    sys.exit(rc)


if __name__ == "__main__":
    exit_without_final_gc(main())
