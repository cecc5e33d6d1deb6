"""``python -m m2mdc COMMAND [args]``: one entry point for the library's CLIs (m2mdc/cli)."""
import importlib
import sys

from .cli import COMMANDS, __doc__ as USAGE

if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    sys.stderr.write(USAGE if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help") else
                     f"python -m m2mdc: error: unknown command {sys.argv[1]!r}; choose one of {', '.join(COMMANDS)}\n")
    sys.exit(0 if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help") else 2)
importlib.import_module(f"m2mdc.cli.{sys.argv[1]}").main(sys.argv[2:])
