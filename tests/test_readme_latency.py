"""The README's latency benchmarks (compiled timings, the INT8 convert, the latency budget's fit), run
shrunk (tests/readme.py: how, and which file runs what)."""
from tests.readme import chain_test

test_readme_chain_runs_shrunk = chain_test(__file__)
