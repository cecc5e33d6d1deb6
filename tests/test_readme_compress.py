"""The README's teacher and compress commands, run shrunk (tests/readme.py: how, and which file runs
what); the first compress of each numeric format measures its deployment."""
from tests.readme import chain_test

test_readme_chain_runs_shrunk = chain_test(__file__)
