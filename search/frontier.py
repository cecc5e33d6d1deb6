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

import csv
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from m2mdc.errors import Parser, UserError, check_range, cli
from m2mdc.io import ensure_writable, out_root
from m2mdc.teacher import add_data_args, add_teacher_args, recipe_from_args

ASHA_STOP_FRACTION = 0.25  # a trial in the bottom quarter at a rung has collapsed (search/early_stop.py)
OBJECTIVE_SETS = {"acc-gmacs": ("val_top1", "gmacs"), "acc-gmacs-latency": ("val_top1", "gmacs", "latency_ms")}


@dataclass(frozen=True)
class Profile:
    """How much compute one search spends (the sampled space is the same in every profile)."""

    num_samples: int
    kd_epochs: int  # T of every KD repair
    steps_per_epoch: int | None  # None = full passes over the training split
    probe_samples: int
    teacher_epochs: int | None  # None = the teacher recipe's default
    n_startup: int  # random trials before the model-based sampler takes over


PROFILES = {
    "smoke": Profile(num_samples=4, kd_epochs=1, steps_per_epoch=3, probe_samples=500, teacher_epochs=5, n_startup=2),
    "quick": Profile(num_samples=12, kd_epochs=2, steps_per_epoch=40, probe_samples=5000,
                     teacher_epochs=None, n_startup=4),
    "paper": Profile(num_samples=64, kd_epochs=5, steps_per_epoch=None, probe_samples=5000,
                     teacher_epochs=None, n_startup=10),
}


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
    if not path:
        return []
    try:
        points = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--points {path} is not a readable JSON file ({e})") from None
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise UserError(f"--points {path} must hold a JSON list of configurations (objects)")
    from search.tracking import flat_config

    sampled = set(space.sampled_names())
    out = []
    for i, point in enumerate(points):
        flat = flat_config(point)
        unknown = sorted(set(flat) - set(space.params))
        missing = sorted(sampled - set(flat))
        if unknown or missing:
            raise UserError(f"--points entry {i}: unknown {unknown}, missing {missing}; give every sampled "
                            f"parameter of the space: {', '.join(sorted(sampled))}")
        out.append({k: v for k, v in flat.items() if k in sampled})
    return out


def _fmt(v, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def summarise_config(cfg: dict) -> str:
    if "depth_share" in cfg:
        s = f"alloc depth {cfg['depth_share']:.2f}"
    else:
        pk = cfg["planes_keep"]
        planes = "/".join(f"{v:.2f}" for v in pk.values()) if isinstance(pk, dict) else f"{pk:.2f}"
        s = f"r {cfg['prune_ratio']:.2f} planes {planes} mid {cfg['mid_keep']:.2f} {cfg['order']}"
    s += f" {cfg['signal']} a {cfg['alpha']:.2f} b {cfg['beta']:.2f} lr {cfg['kd_lr']:.0e}"
    if cfg.get("sparsity"):
        s += f" sparse {cfg['sparsity']:.1f}"
    if cfg.get("qat"):
        s += " QAT"
    return s


def collect_rows(results, tracker) -> list[dict]:
    """One row per trial of the experiment: its status (the one rule, on Ray's record of the trial)
    and final (or last) metrics."""
    from search.outcome import trial_status

    tracker.refresh()  # the MLflow run ids of trials logged before a resume
    rows = []
    for res in results:
        m = dict(res.metrics or {})
        tid = m.get("trial_id") or Path(res.path).name.removeprefix("trial_")
        status = trial_status(m, res.error is not None)
        rows.append({"trial_id": tid, "status": status, "config": res.config, **{
            k: m.get(k) for k in ("val_top1", "test_top1", "gmacs", "params", "size_bytes", "latency_ms",
                                  "sampled_gmacs", "width_scale", "int8", "sparsity", "epochs_done", "keep_cfg")},
            "model_dir": str(Path(res.path) / "model"), "run_id": tracker.runs.get(tid)})
    return rows


def write_tables(rows: list[dict], front: list[dict], folder: Path) -> list[Path]:
    cols = ["trial_id", "status", "pareto", "val_top1", "test_top1", "gmacs", "params", "latency_ms", "int8",
            "sparsity", "sampled_gmacs", "width_scale", "config", "run_id"]
    front_ids = {r["trial_id"] for r in front}
    with open(folder / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "pareto": r["trial_id"] in front_ids, "config": json.dumps(r["config"], sort_keys=True)})
    md = pareto_markdown(front)
    (folder / "pareto.md").write_text(md)
    return [folder / "trials.csv", folder / "pareto.md"]


def pareto_markdown(front: list[dict]) -> str:
    lines = ["| trial | config | val top-1 | test top-1 | GMACs | params | latency bs1 | INT8 | MLflow run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(front, key=lambda r: r["gmacs"]):
        lines.append(f"| {r['trial_id']} | {summarise_config(r['config'])} | {_fmt(r['val_top1'], '.2f')}% | "
                     f"{_fmt(r['test_top1'], '.2f')}% | {_fmt(r['gmacs'], '.4f')} | "
                     f"{_fmt((r['params'] or 0) / 1e6, '.3f')}M | {_fmt(r.get('latency_ms'), '.2f') + (' ms' if r.get('latency_ms') is not None else '')} | "
                     f"{'yes' if r.get('int8') else 'no'} | {r.get('run_id') or ''} |")
    return "\n".join(lines) + "\n"


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
    return run_search(a, prof, space, points, ds, recipe, root, name, exp_dir, identity, meta, mlflow_uri,
                      num_samples, kd_epochs, steps, cpus)


def run_search(a, prof, space, points, ds, recipe, root, name, exp_dir, identity, meta, mlflow_uri,
               num_samples, kd_epochs, steps, cpus) -> int:
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from search.early_stop import CollapseStoppingASHA

    from m2mdc.device import pick_device
    from m2mdc.pipeline import prepare_context
    from m2mdc.slicing import channel_scores
    from search.optuna_search import ParetoSafeOptunaSearch, make_sampler
    from search.pareto import OBJECTIVES, frontier_plot, non_dominated
    from search.ray_cluster import start_or_join
    from m2mdc.io import write_json
    from search.tracking import SearchTracker, TrialLogger
    from search.trainable import SearchSetup, SharedSetup, compression_trial

    device = pick_device(a.device)
    print(f"{ds.describe()}; device {device}; space {space.source} ({space.mode}); budget {a.budget_gmacs:g} GMACs; "
          f"profile {a.profile}: {num_samples} trials, KD T={kd_epochs}"
          f"{f', {steps} batches/epoch' if steps else ''}", flush=True)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # experiment state saved often: resume loses little
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray first: a cluster that cannot be joined fails before any teacher training. Its start is mostly
    # waiting for daemons: import MLflow and open an existing store meanwhile (~2 s of driver CPU; a
    # store that does not exist yet is not created, so a failed start leaves nothing behind).
    with ThreadPoolExecutor(1) as pool:
        store_ready = pool.submit(warm_store, mlflow_uri, name)
        print(start_or_join(a.address, os.cpu_count() or 1, None, a.dashboard), flush=True)
        store_ready.result()

    # Shared inputs, built once: teacher (cached), teacher outputs, MI block scores, channel scores.
    ctx = prepare_context(a.arch, ds, recipe, device, a.out_dir, quiet=a.quiet)
    t = ctx.teacher_record
    print(f"[teacher] val top-1 {t['val_top1']:.2f}%  test top-1 {t['test_top1']:.2f}%  GMACs {t['gmacs']:.4f}",
          flush=True)
    ctx.get_teacher_outputs()
    ctx.get_block_scores(10, prof.probe_samples)
    ch_scores = {}
    if space.mode == "allocator":
        sig = space.params["signal"]
        from m2mdc.data import probe_loader

        for s in (sig.choices or (sig.fixed,)):
            groups = adapter_groups(ctx)
            probe = probe_loader(ds, device, max_samples=prof.probe_samples) if s == "mi" else None
            ch_scores[s] = channel_scores(ctx.teacher, ctx.adapter, groups, s, probe)
    objectives = OBJECTIVE_SETS[a.objectives]
    setup = SearchSetup(ctx, a.budget_gmacs, space.mode, {"epochs": kd_epochs, "steps_per_epoch": steps},
                        probe_samples=prof.probe_samples, channel_scores=ch_scores,
                        measure_latency="latency_ms" in objectives, threads=max(1, int(cpus)),
                        use_gpu=a.gpus_per_trial > 0, quiet=a.quiet, trials_dir=str(exp_dir))

    tracker = SearchTracker(mlflow_uri, name, root / "mlartifacts")
    exp_dir.mkdir(parents=True, exist_ok=True)
    meta_path = exp_dir / "search.json"
    status = "FAILED"
    try:
        params = {k: v for k, v in vars(a).items() if k not in ("resume",)}
        parent = tracker.start_parent(name, {**params, "space": space.source, "space_digest": space.digest},
                                      {"budget_gmacs": str(a.budget_gmacs), "arch": a.arch, "dataset": ds.name},
                                      run_id=meta and meta.get("parent_run_id"))
        if meta is None:
            log_search_inputs(tracker, parent, space, t)
            write_json(meta_path, {"identity": identity, "parent_run_id": parent, "mlflow_uri": mlflow_uri})
        trainable = tune.with_resources(tune.with_parameters(compression_trial, shared=SharedSetup(setup)),
                                        {"cpu": cpus, "gpu": a.gpus_per_trial})
        from ray.tune import CLIReporter

        reporter = CLIReporter(metric_columns={"val_top1": "val top-1", "gmacs": "GMACs", "epochs_done": "epochs"},
                               max_report_frequency=60, sort_by_metric=False)
        run_config = tune.RunConfig(name=name, storage_path=str(exp_dir.parent), callbacks=[TrialLogger(tracker)],
                                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                    verbose=1, progress_reporter=reporter)
        if a.resume and (exp_dir / "tuner.pkl").exists():
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        else:
            import optuna

            storage = optuna.storages.RDBStorage(f"sqlite:///{exp_dir / 'optuna.db'}")
            searcher = ParetoSafeOptunaSearch(
                metric=list(objectives), mode=[OBJECTIVES[o] for o in objectives],
                sampler=make_sampler(a.sampler, a.search_seed, prof.n_startup), storage=storage, study_name=name,
                points_to_evaluate=points or None, budget_gmacs=a.budget_gmacs)
            reports = max_reports(setup, space)
            scheduler = FIFOScheduler() if a.no_asha else CollapseStoppingASHA(
                time_attr="training_iteration", metric="val_top1", mode="max", max_t=reports,
                grace_period=min(kd_epochs, reports), reduction_factor=3, stop_fraction=a.stop_fraction,
                min_recorded=a.asha_min_trials, state_path=exp_dir / "asha-rungs.json")
            tuner = tune.Tuner(trainable, param_space=space.param_space(), run_config=run_config,
                               tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                                           num_samples=num_samples,
                                                           max_concurrent_trials=a.max_concurrent,
                                                           reuse_actors=True,
                                                           trial_dirname_creator=lambda tr: f"trial_{tr.trial_id}"))
        results = tuner.fit()
        ended = results.num_terminated + results.num_errors
        if ended < num_samples:
            status = "KILLED"
            print(f"search interrupted with {ended} of {num_samples} trials finished; "
                  f"continue with the same command plus --resume", file=sys.stderr)
            return 130
        rows = collect_rows(results, tracker)
        done = [r for r in rows if r["status"] == "completed"]
        front = non_dominated(done, objectives)
        front_ids = {r["trial_id"] for r in front}
        files = write_tables(rows, front, exp_dir)
        others = [r for r in rows if r["status"] == "stopped_early" and r["val_top1"] is not None]
        files.append(frontier_plot(done, front, exp_dir / "frontier.png", a.budget_gmacs,
                                   {"gmacs": t["gmacs"], "val_top1": t["val_top1"]},
                                   f"{a.arch} / {ds.name}: {len(done)} finished trials", others))
        counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped_early", "failed",
                                                                   "infeasible")}
        tracker.finish(rows, front_ids, files, {**{f"trials_{k}": v for k, v in counts.items()},
                                                "pareto_size": len(front)})
        status = "FINISHED"
        print(f"\nPareto set ({len(front)} of {counts['completed']} finished trials; {counts['stopped_early']} "
              f"stopped early, {counts['failed']} failed, {counts['infeasible']} infeasible):")
        print(pareto_markdown([dict(r, run_id=tracker.runs.get(r["trial_id"])) for r in front]))
        print(f"outputs: {exp_dir}  |  review: mlflow ui --backend-store-uri {mlflow_uri}")
        return 0
    finally:
        if status != "FINISHED":
            tracker.fail(status)
        ray.shutdown()


def warm_store(uri: str, experiment: str) -> None:
    """Import MLflow and open an existing store while Ray starts. A SQLite store that does not exist
    yet is not opened (opening creates it), so a search that then fails to start writes nothing."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - the import is most of the cost
        return
    MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)


def log_search_inputs(tracker, parent: str, space, teacher: dict) -> None:
    """The parent run's inputs: the space file and the teacher's numbers."""
    import time

    from mlflow.entities import Metric

    if Path(space.source).exists():
        tracker.client.log_artifact(parent, space.source)
    now = int(time.time() * 1000)
    tracker.client.log_batch(parent, metrics=[Metric(f"teacher_{k}", float(teacher[k]), now, 0)
                                              for k in ("val_top1", "test_top1", "params", "gmacs")])


def adapter_groups(ctx) -> list[str]:
    return [g for g in ctx.adapter.group_widths(ctx.teacher) if g.split(":")[0] in ("planes", "mid", "mid2")]


def max_reports(setup, space) -> int:
    """Upper bound of a trial's reports (its epochs + the final report): ASHA's max_t."""
    structural = 3 if space.mode == "fractions" else 2
    tail = 2  # sparsity and QAT repairs
    return (structural + tail) * setup.kd["epochs"] + 1


def exit_without_final_gc(rc) -> None:
    """Exit skipping the interpreter's last garbage collection: it walks every object Ray, MLflow
    and torch created (3-4 s measured on 2 cores) only to free memory the OS reclaims anyway."""
    import gc

    gc.freeze()
    sys.exit(rc)


if __name__ == "__main__":
    exit_without_final_gc(main())
