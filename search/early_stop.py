"""Early stopping for a frontier search: ASHA's rungs, a cut that only removes collapsing trials.

ASHA keeps the top 1/reduction_factor of the trials recorded at each rung. In a frontier search
that is the wrong cut: at equal epochs a smaller model is less accurate by design, so ASHA with
its default cut removed 11 of 12 trials of a quick digits search here (mostly the small,
frontier-relevant ones). This scheduler keeps ASHA's asynchronous rungs (grace_period * rf^k)
but stops a trial only when its val top-1 at a rung falls in the bottom ``stop_fraction`` of the
trials recorded there, and only once ``min_recorded`` trials give that quantile a meaning.
"""
from __future__ import annotations

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler


def _quantile_cutoff(recorded: dict, stop_fraction: float, min_recorded: int):
    if len(recorded) < min_recorded:
        return None
    return np.nanpercentile(list(recorded.values()), stop_fraction * 100)


class CollapseStoppingASHA(AsyncHyperBandScheduler):
    def __init__(self, *, stop_fraction: float = 0.25, min_recorded: int = 4, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < stop_fraction < 1.0:
            raise ValueError(f"stop_fraction must be in (0, 1), got {stop_fraction}")
        for bracket in self._brackets:  # Ray's _Bracket asks self.cutoff(recorded) at every rung
            bracket.cutoff = lambda recorded: _quantile_cutoff(recorded, stop_fraction, min_recorded)
