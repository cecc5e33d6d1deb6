"""No import cycles among the project's modules, imports inside functions included (tests/import_graph.py
reads every import statement of m2mdc/, search/, analysis/, spaces/ and benchmarks/ from the source)."""
from tests.import_graph import cycles, graph


def test_the_import_graph_has_no_cycles():
    g = graph()
    assert len(g) > 80 and g["m2mdc.runner"] >= {"m2mdc.steps", "m2mdc.metrics"}  # the graph was read
    assert cycles(g) == [], "\n".join(" <-> ".join(c) for c in cycles(g))


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    g = graph()
    g["m2mdc.io"] = g["m2mdc.io"] | {"m2mdc.runner"}  # runner -> ... -> io, and io -> runner
    assert any({"m2mdc.io", "m2mdc.runner"} <= set(c) for c in cycles(g))


def test_the_library_never_imports_the_search_stack():
    g = graph()
    for name, deps in g.items():
        if name.startswith("m2mdc"):
            assert not {d for d in deps if d.split(".")[0] in ("search", "analysis")}, name
