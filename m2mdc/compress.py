"""Alias: ``python -m m2mdc.compress`` runs m2mdc/cli/compress.py."""
from .cli.compress import main

if __name__ == "__main__":
    main()
