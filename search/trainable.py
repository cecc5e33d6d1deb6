"""The Ray Tune trainable: one sampled configuration -> one compression plan, run end to end.

Everything expensive that trials share (datasets, teacher, cached teacher outputs, MI block
scores, channel scores for the allocator) is built once in the driver as a ``SearchSetup`` and
handed to trials through the Ray object store (``SharedSetup`` inside ``tune.with_parameters``;
each worker process fetches it once, without copying the bulk tensors). A trial reports after
every KD / training epoch (``final: False``) so ASHA can stop it, then once more with
``final: True`` and its deployment numbers; only such final reports count as finished trials.
"""
from __future__ import annotations

import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch
from ray import tune
from ray.util.client import ray as ray_client

from m2mdc.arch_latency import ArchLatency
from m2mdc.compiler import Target
from m2mdc.context import Context
from m2mdc.cost import CostModel
from m2mdc.device import pick_device
from m2mdc.io import write_json
from m2mdc.objectives import METRICS
from m2mdc.results import save_result
from m2mdc.trial import TrialSpec
from m2mdc.trial import run_trial as run_config

from . import faults
from .outcome import (CONTROL, ENVIRONMENT_ERRNOS, ENVIRONMENT_REPORT, FINAL_RECORD, REPORT_INDEX, ReplayedFailure,
                      environment_message, replay, unwritable)
from .promotion import PROMOTED_FROM, fidelity_of, knobs_of


@dataclass
class SearchSetup:
    """What the driver computes once and every trial reads."""

    ctx: Context
    budget_gmacs: float
    recipe: str  # the compiler recipe: the space's mode (fractions | allocator)
    training: dict  # the profile's KD budget: epochs (T), steps_per_epoch, batch_size
    bins: int = 10
    probe_samples: int = 5000
    channel_scores: dict = field(default_factory=dict)  # signal -> {group: scores} (allocator mode)
    measure_latency: bool = False
    threads: int = 1
    use_gpu: bool = False
    quiet: bool = False
    trials_dir: str | None = None  # where trial_<id>/model goes (the experiment folder; shared storage on a cluster)
    budget_ms: float | None = None  # latency budget of the shipped model at latency_batch, threads
    latency_batch: int = 1  # the batch size every latency figure of the search is timed at
    latency_threads: int | None = None  # threads latency is timed with (default: the trial's)
    latency_cache: str | None = None  # folder of pre-training latency measurements (m2mdc.arch_latency)
    project: str = "both"  # widths onto the cost target up and down, or only down (m2mdc.compiler.compile_config)
    adaptive_bn: bool = True  # measure every short-fidelity trial without training too (val_top1_adaptive_bn)
    long_steps: int | None = None  # batches per epoch of the long budget (None: full passes; the smoke profile's few)
    _latency = None  # this process's ArchLatency (built on first use, not shipped)

    def arch_latency(self):
        """The pre-training latency of architectures (cached per machine), at the search's batch and threads."""
        if self._latency is None:
            ds = self.ctx.ds
            self._latency = ArchLatency(self.ctx.adapter, ds.num_classes, ds.resolution, batch=self.latency_batch,
                                        threads=self.latency_threads or self.threads,
                                        cache_dir=Path(self.latency_cache) if self.latency_cache else None)
        return self._latency

    def target(self) -> Target:
        ctx = self.ctx
        return Target(ctx.adapter, ctx.teacher, CostModel(ctx.adapter, ctx.ds.num_classes, ctx.ds.resolution),
                      ctx.get_block_scores(self.bins, self.probe_samples), self.channel_scores)

    def spec(self, fidelity: str) -> TrialSpec:
        """How the library's trial path compiles, trains and measures this search's trials at ``fidelity``."""
        return TrialSpec(recipe=self.recipe, budget_gmacs=self.budget_gmacs, training=self.training, bins=self.bins,
                         probe_samples=self.probe_samples, budget_ms=self.budget_ms, project=self.project,
                         fidelity=fidelity, long_steps=self.long_steps, adaptive_bn=self.adaptive_bn,
                         measure_latency=self.measure_latency, latency_batch=self.latency_batch,
                         latency_threads=self.latency_threads or self.threads)


BULK_BYTES = 1 << 20  # tensors at least this big (datasets, teacher outputs) are shared zero-copy


def _tensor_out(t: torch.Tensor):
    if t.numel() * t.element_size() < BULK_BYTES or t.requires_grad or t.is_sparse:
        return "pickle", pickle.dumps(t, protocol=5)  # plain pickle: torch's own reducer
    return "numpy", (t.detach().cpu().numpy(), str(t.device))


def _tensor_in(packed) -> torch.Tensor:
    kind, payload = packed
    if kind == "pickle":
        return pickle.loads(payload)
    array, device = payload
    with warnings.catch_warnings():  # the object store's buffers are read-only; trials only read them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


class SharedSetup:
    """A ``SearchSetup`` in Ray's object store, fetched once per worker process.

    Why not ``tune.with_parameters(fn, setup=setup)`` alone: its wrapper calls ``ray.get`` at every
    trial start (ray/tune/trainable/util.py), and torch tensors unpickle by copy, so every trial
    re-read ~450 MB of CIFAR-100 images and teacher outputs (2.5-3.1 s to put, 0.7-2.9 s per trial on
    2 cores). Here bulk tensors travel as numpy arrays, which Ray maps zero-copy, and the fetched
    setup is kept for the next trial of the same (reused) worker.
    """

    _fetched: dict = {}  # object ref hex -> SearchSetup, per process

    def __init__(self, setup: SearchSetup):
        if ray_client.is_connected():  # Ray Client (--address ray://...) pickles on its own: a plain put
            self.ref = ray.put(setup)
            return
        ray.util.register_serializer(torch.Tensor, serializer=_tensor_out, deserializer=_tensor_in)
        try:
            self.ref = ray.put(setup)
        finally:
            ray.util.deregister_serializer(torch.Tensor)

    def get(self) -> SearchSetup:
        key = self.ref.hex()
        if key not in SharedSetup._fetched:
            SharedSetup._fetched.clear()  # a new search in this process: drop the last one's
            SharedSetup._fetched[key] = ray.get(self.ref)
        return SharedSetup._fetched[key]


def _report(metrics_row: dict) -> None:
    tune.report(metrics_row)


def _log(line: str) -> None:
    print(line, flush=True)


def _row(**fields) -> dict:
    """A report row; every field is a METRICS entry or a control field, so tracking and tables know it."""
    unknown = set(fields) - set(METRICS) - set(CONTROL)
    if unknown:
        raise KeyError(f"trial reports undeclared field(s) {sorted(unknown)}; declare them in m2mdc.objectives.METRICS")
    return fields


def run_trial(config: dict, setup: SearchSetup, report=_report, out_dir: Path | None = None) -> dict:
    """Run one configuration; ``report`` receives every epoch row and the final row (returned).

    Raises on a broken trial (e.g. a non-finite loss), which Ray records as a failed trial.
    """
    torch.set_num_threads(max(1, int(setup.threads)))
    ctx = setup.ctx
    device = pick_device("cuda" if setup.use_gpu else "cpu")
    if device != ctx.device:
        ctx.device, ctx.teacher = device, ctx.teacher.to(device)
    before = {PROMOTED_FROM: config[PROMOTED_FROM]} if PROMOTED_FROM in config else {}

    def on_epoch(base: dict, row: dict):
        report(_row(**base, final=False, val_top1=row["val_top1"], gmacs=row["gmacs"], plan_step=row["step_index"],
                    epochs_done=row["epochs_done"]))
        faults.point("trial.epoch")

    trial = run_config(knobs_of(config), ctx, setup.target(), setup.spec(fidelity_of(config)),
                       latency=setup.arch_latency() if setup.budget_ms is not None else None, before=before,
                       on_epoch=on_epoch, quiet=setup.quiet, log=None if setup.quiet else _log)
    final = _row(**trial.row(final=True))
    if trial.feasible and out_dir is not None:
        save_result(trial.model, {**trial.record, "search_config": config}, Path(out_dir) / "model")
    report(final)
    return final


def compression_trial(config: dict, shared: SharedSetup) -> None:
    """Ray Tune function trainable (``tune.with_parameters(compression_trial, shared=SharedSetup(setup))``)."""
    setup = shared.get()
    context = tune.get_context()
    # With reuse_actors a reused worker's get_trial_dir() still names its first trial's folder
    # (seen with Ray 2.60): address the folder by trial id instead.
    folder = (Path(setup.trials_dir) / f"trial_{context.get_trial_id()}" if setup.trials_dir
              else Path(context.get_trial_dir()))
    node = ray.get_runtime_context().get_node_id()  # recorded: which machine of a cluster ran the trial
    ended = replay(Path(setup.trials_dir), context.get_trial_id()) if setup.trials_dir else None
    if ended is not None:  # a resumed search re-creates a trial that had ended: it ends the same way, untrained
        if "error" in ended:
            raise ReplayedFailure(ended["error"])
        _report(ended["row"])
        return

    reports = 0

    def report(row: dict) -> None:
        nonlocal reports
        reports += 1
        row = {**row, REPORT_INDEX: reports}  # the scheduler's clock: a replayed row keeps its own
        if row.get("final"):
            row = {**row, "node": node}
            write_json(folder / FINAL_RECORD, row)  # before any store hears of it: a resume reports it again
            faults.point("trial.final_saved", folder / FINAL_RECORD)
        _report(row)

    try:
        run_trial(config, setup, report=report, out_dir=folder)
    except Exception as failure:  # noqa: BLE001 - re-raised unless the disk or folder is what failed
        e = failure if isinstance(failure, OSError) and failure.errno in ENVIRONMENT_ERRNOS else unwritable(folder)
        if e is None:
            raise
        # not the configuration's failure: the driver stops the search and the trial stays unfinished everywhere
        _report({ENVIRONMENT_REPORT: environment_message(e, f" in trial {context.get_trial_id()}")})
        time.sleep(3600)  # the driver stops the search (and this worker) on that report
