"""The README's searches, each with the review, export and latency check that read it, the budget
allocator and the results paster, run shrunk (tests/readme.py: how, and which file runs what)."""
from tests.readme import chain_test

test_readme_chain_runs_shrunk = chain_test(__file__)
