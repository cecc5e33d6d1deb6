"""analysis/baselines.py's table when the budgets hold different seeds (--long-seeds: the long column
is completed over several sessions): each mean is over its own budget's runs, and the row says which."""
from analysis.baselines import seeds_cell, table


def result(budget, seed, test, val=50.0):
    return {"run": {"budget": budget, "seed": seed, "tuned_kd": False, "method": "config"}, "int8": False,
            "test_top1": test, "val_top1": val, "gmacs": 0.02, "params": 5e6}


TEACHER = {"test_top1": 56.5, "val_top1": 55.3, "gmacs": 0.0372, "params": 11.2e6}


def test_each_budget_is_averaged_over_its_own_seeds_and_the_row_names_them():
    rows = {"uniform": [result("short", 0, 50.0), result("short", 1, 52.0), result("short", 2, 54.0),
                        result("long", 0, 55.0, val=53.0)]}
    md = table(rows, TEACHER, ["short", "long"], {})
    line = next(ln for ln in md.splitlines() if ln.startswith("| uniform"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:6] == ["52.00 ± 2.00", "50.00", "55.00", "53.00"]
    assert cells[-1] == "short 0,1,2; long 0"


def test_equal_seeds_are_named_once():
    rs = [result(b, s, 50.0) for b in ("short", "long") for s in (0, 1)]
    assert seeds_cell(rs) == "0,1"
    assert seeds_cell([result("short", 2, 1.0), result("short", 0, 1.0)]) == "0,2"
