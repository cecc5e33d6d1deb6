"""User-facing errors and the CLI wrapper that turns them into one line + exit 2."""
from __future__ import annotations

import argparse
import functools
import shlex
import sys
from pathlib import Path


class UserError(Exception):
    """Bad input the user can fix: printed as one line, exit code 2, no traceback."""


class Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments on one line (exit 2) instead of usage + error."""

    def parse_args(self, args=None, namespace=None):
        """The namespace plus ``command``: the command line as typed, which every table a tool writes
        names beside its figures."""
        ns = super().parse_args(args, namespace)
        given = sys.argv[1:] if args is None else [str(x) for x in args]
        ns.command = f"{self.prog} {shlex.join(given)}".strip()
        return ns

    def error(self, message):  # noqa: D401 - argparse hook
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def cli(fn):
    """Run a CLI main(); a UserError becomes 'prog: error: ...' on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(argv=None):
        try:
            return fn(argv)
        except UserError as e:
            prog = _prog_name(fn)
            sys.stderr.write(f"{prog}: error: {e}\n")
            sys.exit(2)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            sys.exit(130)

    return wrapper


def _prog_name(fn) -> str:
    mod = sys.modules.get(fn.__module__)
    spec = getattr(mod, "__spec__", None)
    name = spec.name if spec is not None else fn.__module__
    return name if name != "__main__" else (sys.argv[0].rsplit("/", 1)[-1] or "m2mdc")


def check_range(name: str, value: float, lo: float, hi: float, lo_open=False, hi_open=False, hint=""):
    """Raise a UserError unless lo <(=) value <(=) hi."""
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise UserError(f"{name}={value} is outside {interval}{'; ' + hint if hint else ''}")


def positive_ints(text: str, what: str) -> list[int]:
    """A comma-separated list of integers >= 1 (batch sizes, counts), or a UserError naming ``what``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers (got {text!r})") from None
    if not values or min(values) < 1:
        raise UserError(f"{what} must list integers >= 1 (got {text!r})")
    return values


def plain_name(value: str, what: str, example: str) -> str:
    """``value`` if it names one file or folder inside an output folder (no '/', not '.' or '..'), else a
    UserError naming ``what``: a name becomes a path under OUT, and must not leave it."""
    if Path(value).name != value or value in ("", ".", ".."):
        raise UserError(f"{what} {value!r} must be a plain folder name (no '/'), e.g. {example}")
    return value
