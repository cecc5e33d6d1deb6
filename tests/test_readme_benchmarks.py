"""The README's other benchmarks (data pipeline, MI scoring, KD epoch, search overhead, depth latency) and
the sampler comparison, run shrunk (tests/readme.py: how, and which file runs what)."""
from tests.readme import chain_test

test_readme_chain_runs_shrunk = chain_test(__file__)
