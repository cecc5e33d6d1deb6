"""What a compressed model is judged by: the objectives table, and the metric schema of a trial.

Tracking, the Pareto computation, the CLI tables, the plots and analysis/review.py read their
columns from here. An objective is a metric with a direction; adding one is one row below (the
trial must report the metric: every ``Metric`` listed here is reported by a finished trial).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # column header / axis label
    unit: str
    measured: str  # how it is measured, one line
    fmt: str = ".4g"  # format spec of a table cell (after ``scale``)
    scale: float = 1.0  # shown value = value * scale
    kind: str = "metric"  # "metric" (a number, logged per step) or "tag" (text)
    per_epoch: bool = False  # also reported after every training epoch (ASHA reads val_top1)
    direction: str | None = None  # "max" / "min": may be an objective
    reference: str | None = None  # hypervolume reference of an objective: "zero", "budget" or "teacher"

    def cell(self, value) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return ""
        if self.kind == "tag":
            return str(value)
        return format(float(value) * self.scale, self.fmt) + (f" {self.unit}" if self.unit in ("ms", "MB") else "")


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("val_top1", "val top-1 (%)", "%", "top-1 accuracy on the validation split (what selection sees)", ".2f",
           per_epoch=True, direction="max", reference="zero"),
    Metric("test_top1", "test top-1 (%)", "%", "top-1 accuracy on the test split (reported, never selected on)",
           ".2f"),
    Metric("gmacs", "GMACs", "GMACs", "fvcore multiply-accumulates of one image at the input resolution", ".4f",
           per_epoch=True, direction="min", reference="budget"),
    Metric("params", "params (M)", "M", "parameter count", ".3f", scale=1e-6),
    Metric("size_bytes", "size (MB)", "MB", "bytes of what ships: FP32 state_dict, or the INT8 torch.export program",
           ".2f", scale=1e-6, direction="min", reference="teacher"),
    Metric("latency_ms", "latency (ms)", "ms", "median CPU time of one batch (the search's --latency-batch, default "
           "1) through the shipped model (inductor-compiled FP32, or INT8 where QAT), measured in the trial after "
           "training", ".2f", direction="min", reference="teacher"),
    Metric("latency_spread_pct", "latency spread (%)", "%", "interquartile range of the timed calls / median", ".0f"),
    Metric("latency_batch", "latency batch", "", "the batch size latency figures were timed at", ".0f"),
    Metric("predicted_latency_ms", "predicted latency (ms)", "ms", "latency of the untrained final architecture "
           "as shipped, measured before training (what the latency budget was checked against)", ".2f"),
    Metric("predicted_latency_spread_pct", "predicted latency spread (%)", "%", "interquartile range / median of "
           "that pre-training measurement", ".0f"),
    Metric("sampled_latency_ms", "sampled latency (ms)", "ms", "pre-training latency of the configuration before "
           "the latency projection", ".2f"),
    Metric("latency_measurements", "latency measurements", "", "architectures timed before training to fit the "
           "latency budget (cached ones included)", ".0f"),
    Metric("latency_seconds", "latency fit time (s)", "s", "wall time of fitting the latency budget before "
           "training (builds, compiles, timing; near 0 when cached)", ".0f"),
    Metric("violation", "budget violation", "", "infeasible: how far over a budget the configuration stays at its "
           "smallest (relative; what the sampler's constraint reads)", ".3f"),
    Metric("latency_backend", "latency backend", "", "what ran: inductor, or eager-fallback when compiling failed",
           kind="tag"),
    Metric("int8", "INT8", "", "true when the model ships as an INT8 PT2E program", kind="tag"),
    Metric("sparsity", "sparsity", "", "fraction of conv + linear weights that are zero", ".2f"),
    Metric("sampled_gmacs", "sampled GMACs", "GMACs", "GMACs of the configuration before the budget projection",
           ".4f"),
    Metric("width_scale", "width scale", "", "factor every width fraction was scaled by to reach its cost target "
           "(< 1: down, > 1: up towards the teacher's widths)", ".3f"),
    Metric("target_gmacs", "target GMACs", "GMACs", "the cost the architecture was projected onto: the budget x the "
           "configuration's cost_target", ".4f"),
    Metric("under_target", "under target", "", "true when even the teacher's full widths stay under the cost target "
           "(a deep cut): recorded at the cost it reaches, never widened past the teacher", kind="tag"),
    Metric("val_top1_adaptive_bn", "val top-1, no training (%)", "%", "val top-1 right after the structural edits "
           "with BN recalibrated, before any KD (the adaptive-BN fidelity, m2mdc.fidelity)", ".2f"),
    Metric("fidelity", "fidelity", "", "the training the row's val top-1 was measured after: short (the search "
           "profile's repairs) or long (8 full KD epochs; a promoted trial)", kind="tag"),
    Metric("promoted_from", "promoted from", "", "a promoted trial: the search trial it trained again at the long "
           "budget", kind="tag"),
    Metric("epochs_done", "epochs", "", "training epochs the trial ran", ".0f", per_epoch=True),
    Metric("train_seconds", "train time (s)", "s", "wall time of the plan", ".0f"),
    Metric("keep_cfg", "keep_cfg", "", "the architecture (rebuilds the model with its adapter)", kind="tag"),
    Metric("plan", "plan", "", "the steps the trial ran", kind="tag"),
    Metric("note", "note", "", "why a configuration was rejected untrained", kind="tag"),
    Metric("export_error", "export error", "", "why the INT8 artefact could not be written (size unknown)",
           kind="tag"),
    Metric("node", "node", "", "the Ray node that ran the trial", kind="tag"),
    Metric("device", "device", "", "the device the trial trained on (cpu, cuda:N)", kind="tag"),
)}

OBJECTIVES: dict[str, Metric] = {n: m for n, m in METRICS.items() if m.direction}
OBJECTIVE_SETS = {"acc-gmacs": ("val_top1", "gmacs"), "acc-gmacs-latency": ("val_top1", "gmacs", "latency_ms")}


def directions(names) -> list[str]:
    return [OBJECTIVES[n].direction for n in names]


def table_columns(objectives, rows=()) -> list[str]:
    """The metric columns a results table shows: the objectives first, then test accuracy and sizes; with
    a latency budget (rows carry a prediction), the latency predicted before training and the batch."""
    rest = [n for n in ("test_top1", "params", "size_bytes", "latency_ms", "latency_backend", "int8") if
            n not in objectives]
    budgeted = [n for n in ("predicted_latency_ms", "latency_batch") if any(r.get(n) is not None for r in rows)]
    return [*objectives, *rest, *budgeted]
