"""The plots people read: a frontier point's marker names its origin and its colour its fidelity; the
baselines plot is one row per method with mean ± sample std per budget."""

import pytest
from PIL import Image

from analysis.baselines import dot_plot
from search.optuna_search import origin_label
from search.pareto import ORIGIN_MARKERS, frontier_plot, non_dominated, origin_kind


@pytest.mark.parametrize("kind, name, want", [("seeded baseline", "uniform width", "seeded baseline"),
                                               ("prior", "fewest blocks at full width", "prior"),
                                               ("sampled", "tpe #7", "sampled"), ("given", "points.json #0", "given")])
def test_every_origin_label_the_search_writes_has_its_own_marker(kind, name, want):
    assert origin_kind(origin_label(kind, name)) == want
    assert len(set(ORIGIN_MARKERS.values())) == len(ORIGIN_MARKERS)
    assert origin_kind(None) == "unknown"


def test_frontier_and_dot_plots_render(tmp_path):
    rows = [{"gmacs": 0.02, "val_top1": 55.0, "origin": "seeded baseline: uniform width", "fidelity": "short"},
            {"gmacs": 0.015, "val_top1": 54.0, "origin": "sampled (tpe #6)", "fidelity": "long"},
            {"gmacs": 0.012, "val_top1": 48.0, "origin": "sampled (tpe #7)", "fidelity": "short"}]
    path = frontier_plot(rows, non_dominated(rows, ("val_top1", "gmacs")), tmp_path / "f.png", 0.02)
    assert Image.open(path).size[0] > 600
    runs = {f"method {i}": [{"run": {"budget": b}, "test_top1": 50.0 + i + s / 10} for b in ("short", "long")
                            for s in range(3)] for i in range(13)}
    path = dot_plot(runs, {"test_top1": 56.5}, 0.02, tmp_path / "d.png", ["short", "long"])
    assert Image.open(path).size[1] > 13 * 0.42 * 120  # a row per method
