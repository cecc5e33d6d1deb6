"""Named plans of the two papers, as plan data (the compiler, m2mdc.compiler, prices and validates them).

``m2mdc_plan``: M2M-DC's recipe, block prune -> KD -> planes -> KD -> mid -> KD. ``pqd_plan``:
Prune-Quantize-Distill in any of its six stage orders (its ablation), epochs split P/Q/D.
"""
from __future__ import annotations

from .distill import KDConfig
from .errors import UserError

PQD_ORDERS = ("pqd", "pdq", "qpd", "qdp", "dpq", "dqp")  # the PQD paper's stage-order ablation
PRESETS = ("m2mdc", "m2mdc+qat", *PQD_ORDERS)
PQD_SPLIT = (0.2, 0.4, 0.4)  # the PQD paper's P/Q/D epoch split
PQD_EPOCHS = 10
PQD_SPARSITY = 0.5


def m2mdc_plan(prune_ratio: float | None = 0.5, planes_keep: float | dict | None = 0.5,
               mid_keep: float | dict | None = 0.5, keep_blocks: dict | None = None, signal: str = "bn",
               **kd) -> list[dict]:
    """The paper's recipe: block prune -> KD -> planes -> KD -> mid -> KD (a slice step is
    left out when its keep is None or 1); ``kd`` are the kd step's settings."""
    plan: list[dict] = []
    if keep_blocks is not None:
        plan += [{"step": "block_prune", "keep_blocks": keep_blocks}, {"step": "kd", **kd}]
    elif prune_ratio:
        plan += [{"step": "block_prune", "ratio": prune_ratio}, {"step": "kd", **kd}]
    if planes_keep not in (None, 1, 1.0):
        plan += [{"step": "planes", "keep": planes_keep, "signal": signal}, {"step": "kd", **kd}]
    if mid_keep not in (None, 1, 1.0):
        plan += [{"step": "mid", "keep": mid_keep, "signal": signal}, {"step": "kd", **kd}]
    return plan


def pqd_plan(order: str = "pqd", sparsity: float = PQD_SPARSITY, epochs: int = PQD_EPOCHS, split=PQD_SPLIT,
             lr: float = KDConfig.lr, **kd) -> list[dict]:
    """Prune (P), quantise (Q), distil (D) in ``order``; ``epochs`` are shared P/Q/D by ``split``
    (PQD's ablation uses 20/40/40). P = unstructured pruning + CE repair, Q = QAT + CE training
    under fake-quant, D = KD (logit/feature alignment, ramped)."""
    if sorted(order) != ["d", "p", "q"]:
        raise UserError(f"PQD order {order!r} must be a permutation of p, q, d (e.g. pqd)")
    e = dict(zip("pqd", (max(1, round(f * epochs)) for f in split)))
    shared = {k: kd[k] for k in ("steps_per_epoch", "seed", "batch_size", "clip") if k in kd}  # every stage alike
    stages = {"p": [{"step": "sparsity", "target": sparsity}, {"step": "train", "epochs": e["p"], "lr": lr, **shared}],
              "q": [{"step": "qat"}, {"step": "train", "epochs": e["q"], "lr": lr, **shared}],
              "d": [{"step": "kd", "epochs": e["d"], "lr": lr, **kd}]}
    return [s for c in order for s in stages[c]]


def preset_plan(name: str, prune_ratio: float = 0.5, planes_keep=0.5, mid_keep=0.5, signal: str = "bn",
                sparsity: float = PQD_SPARSITY, epochs: int = PQD_EPOCHS, split=PQD_SPLIT, **kd) -> list[dict]:
    """Named plans: ``m2mdc`` (paper 1), ``m2mdc+qat`` (then QAT with KD under fake-quant),
    and the PQD orders (paper 2: ``pqd`` and its five ablation permutations)."""
    if name == "m2mdc":
        return m2mdc_plan(prune_ratio, planes_keep, mid_keep, signal=signal, **kd)
    if name == "m2mdc+qat":
        return m2mdc_plan(prune_ratio, planes_keep, mid_keep, signal=signal, **kd) + [{"step": "qat"},
                                                                                      {"step": "kd", **kd}]
    if name in PQD_ORDERS:
        return pqd_plan(name, sparsity, epochs, split, **kd)
    raise UserError(f"unknown plan preset {name!r}; choose one of {', '.join(PRESETS)}")
