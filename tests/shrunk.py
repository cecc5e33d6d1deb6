"""Run an analysis tool as a user does, but with the budgets' batches per epoch cut (CI time): the
short budget's from 40 to SHORT_STEPS, the long budget's from all (18 on digits) to LONG_STEPS, still
more than the short one's: ``python -m tests.shrunk analysis/finalize.py ARGS...``.

Only the number of batches changes: the tool, its arguments, its epochs and KD settings are the
user's, and tests assert on the steps per epoch the runs record, so a run that ignored the shrink
would fail them. (The README's finalize command is only parsed: tests/readme.py.)"""
import runpy
import sys

from analysis import study

SHORT_STEPS = 2
LONG_STEPS = 3
PREFIX = [sys.executable, "-m", "tests.shrunk"]  # what a test puts before the tool's path


def short_budget(steps: int = SHORT_STEPS) -> dict:
    """The short budget with ``steps`` batches per epoch, its epochs unchanged (also for in-process tests)."""
    return {**study.BUDGETS["short"], "steps_per_epoch": steps}


if __name__ == "__main__":
    study.BUDGETS["short"] = short_budget()  # the one dict every tool reads
    study.BUDGETS["long"] = {**study.BUDGETS["long"], "steps_per_epoch": LONG_STEPS}
    study.BUDGETS["search"] = {**study.BUDGETS["search"], "steps_per_epoch": SHORT_STEPS}
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
