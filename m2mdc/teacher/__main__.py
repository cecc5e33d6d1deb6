"""``python -m m2mdc.teacher``: the CLI lives with the others (m2mdc/cli/teacher.py); this package is the library."""
from m2mdc.cli.teacher import main

main()
