"""``python -m m2mdc.allocate``: the CLI lives with the others (m2mdc/cli/allocate.py); this package is the library."""
from m2mdc.cli.allocate import main

main()
