"""What a person watching a search reads: one line when a trial starts and one when it ends
(configuration, cost target and reached cost, val top-1, fidelity, seconds) and a progress bar over the
trials with an ETA. Ray Tune's own status table is only shown with --verbose."""
from __future__ import annotations

import sys
import time

from ray.tune import Callback
from tqdm import tqdm


def config_summary(config: dict, width: int = 90) -> str:
    """``knob=value`` pairs of a trial's configuration, numbers to 2 decimals, cut to ``width`` characters."""
    parts = []
    for key, value in sorted(config.items()):
        if key.startswith("_") or isinstance(value, (dict, list)):
            continue
        parts.append(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}")
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


class TrialConsole(Callback):
    """Ray Tune callback printing a start and an end line per trial, above a tqdm bar over ``total`` trials."""

    def __init__(self, total: int, stage: str = "trial", stream=sys.stderr):
        self.total, self.stage, self.stream = total, stage, stream
        self.started: dict[str, float] = {}
        self.numbers: dict[str, int] = {}
        self.bar = tqdm(total=total, desc=f"{stage}s", unit=stage, file=stream, dynamic_ncols=True, leave=True)

    def _line(self, text: str) -> None:
        self.bar.write(text, file=self.stream)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.monotonic()
        self.numbers[trial.trial_id] = len(self.numbers) + 1
        self._line(f"[{self.stage} {self.numbers[trial.trial_id]}/{self.total} start] "
                   f"{config_summary(trial.config)}")

    def _end(self, trial, how: str) -> None:
        r = trial.last_result or {}
        seconds = time.monotonic() - self.started.get(trial.trial_id, time.monotonic())
        n = self.numbers.get(trial.trial_id, "?")
        cost = f"{r['gmacs']:.4f} GMACs" if isinstance(r.get("gmacs"), (int, float)) else "cost n/a"
        if isinstance(r.get("target_gmacs"), (int, float)):
            cost += f" (target {r['target_gmacs']:.4f})"
        val = f"val {r['val_top1']:.2f}%" if isinstance(r.get("val_top1"), (int, float)) else "no val"
        self._line(f"[{self.stage} {n}/{self.total} {how}] {val} at {cost}, fidelity {r.get('fidelity', '?')}, "
                   f"{seconds:.0f} s")
        self.bar.update(1)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "done" if (trial.last_result or {}).get("final") else "stopped early")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "failed")

    def on_experiment_end(self, trials, **info):
        self.bar.close()
