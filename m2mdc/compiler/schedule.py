"""From structural edits to a plan: KD repairs as the schedule says, then the tail stages (sparsity, QAT)."""
from __future__ import annotations

from ..config import spread
from ..cost import CostModel
from ..distill import KDConfig
from ..errors import UserError

KD_EPOCHS = KDConfig.epochs


def kd_step(kd: dict) -> dict:
    return {"step": "kd", **kd}


def tail_steps(v: dict, kd: dict) -> list[dict]:
    """Unstructured sparsity and INT8 QAT (each followed by a KD repair) in ``tail_order``."""
    parts = {"s": [{"step": "sparsity", "target": float(v["sparsity"])}, kd_step(kd)] if v["sparsity"] > 0 else [],
             "q": [{"step": "qat"}, kd_step(kd)] if v["qat"] else []}
    return [s for c in v["tail_order"] for s in parts[c]]


def scheduled(edits: list[dict], v: dict, kd: dict) -> list[dict]:
    """The structural edits with their KD repairs as the schedule says, then the tail stages: progressive
    = a repair of T epochs after every edit (the paper's); one-shot = every edit, then one repair with
    all their epochs (Torch-Pruning's usual use). A plan with nothing to do still gets one repair, so
    every trial trains."""
    if v["schedule"] == "one-shot" and edits:
        plan = [*edits, kd_step({**kd, "epochs": len(edits) * kd.get("epochs", KD_EPOCHS)})]
    else:
        plan = [s for e in edits for s in (e, kd_step(kd))]
    plan += tail_steps(v, kd)
    return plan or [kd_step(kd)]


def planes_fractions(v: dict, cost: CostModel) -> dict[str, float]:
    p = v["planes_keep"]
    if isinstance(p, dict) and set(p) != set(cost.stage_blocks):
        raise UserError(f"planes_keep per stage must name every stage of this model, {', '.join(cost.stage_blocks)}; "
                        f"got {', '.join(map(str, p)) or 'none'} (or give one fraction for all)")
    return {s: float(x) for s, x in spread(p, cost.stage_blocks).items()}
