"""Alias: ``python -m m2mdc.demo`` runs m2mdc/cli/demo.py."""
from .cli.demo import main

if __name__ == "__main__":
    main()
