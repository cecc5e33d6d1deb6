"""A cache for torchao's pattern graphs: in memory per process, and on disk across processes.

torchao strict-exports the same small conv-bn / batch-norm / dropout pattern graphs again on every
call of ``_get_aten_graph_module_for_pattern``: ~100 exports per ``convert_pt2e`` of a ResNet-18 and 4
per train/eval switch of a QAT graph, ~0.25 s each. Every convert took ~25-30 s and every evaluation
of a QAT student paid ~1.7 s of switching (benchmarks/qat_convert.py). Each export also resets dynamo.

In memory, a pattern graph is keyed by what it depends on (``memory_key``: the pattern's code and
closure flags, the example inputs' shapes and dtypes, never their values); callers get a deep copy, so
one that edits its pattern cannot change another's. On disk, torch.export's own serialisation of the
ExportedProgram is kept (``torch.export.save``), and torchao's builder is replayed on the loaded
program, so its post-processing is torchao's own code, not a copy: a new process (a search trial
worker, a CLI run) loads ~100 graphs instead of exporting them again (benchmarks/qat_convert.py). tests/test_quant.py
checks the converted model is the same as torchao's uncached one, from memory and from disk.

The disk folder: ``$M2MDC_CACHE_DIR/torchao-patterns``, else ``~/.cache/m2mdc/torchao-patterns``
(``$XDG_CACHE_HOME`` respected); entries are keyed by torch and torchao versions too. Delete the
folder to clear it; an unreadable entry is exported again and overwritten.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import logging
import os
import tempfile
import types
from pathlib import Path

import torch

# torchao registers an Enum with torch's pytree at import; torch logs a deprecation note for it on every
# run, which would break the one-line error of every CLI that touches INT8 (not ours to fix).
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
import torchao  # noqa: E402
from torchao.quantization.pt2e.export_utils import WrapperModule  # noqa: E402

CACHE_ENV = "M2MDC_CACHE_DIR"
BUILDER = "_get_aten_graph_module_for_pattern"
# the torchao modules that bind the pattern builder by name (so each needs routing through the cache)
BUILDER_MODULES = ("utils", "qat_utils", "reference_representation_rewrite")


def default_directory() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "m2mdc"
    return Path(root) / "torchao-patterns"


def _function(pattern):
    fn = pattern.fn if type(pattern) is WrapperModule else pattern
    return fn if type(fn) is types.FunctionType else None


def _signature(v):
    return ("tensor", tuple(v.shape), v.dtype, v.device.type) if isinstance(v, torch.Tensor) else v


def memory_key(pattern, example_inputs: tuple, is_cuda: bool, kwargs: dict):
    """What an exported torchao pattern graph depends on: the pattern's code and closure (the flags
    torchao builds it from), the example inputs' shapes and dtypes (not their random values), and
    kwargs alike. None (do not cache) when the pattern is not a plain function or a closure value is
    unhashable."""
    fn = _function(pattern)
    if fn is None:
        return None
    try:  # an empty closure cell raises ValueError, an unhashable value TypeError: then do not cache
        key = (fn.__code__, tuple(c.cell_contents for c in fn.__closure__ or ()), fn.__defaults__,
               tuple(_signature(x) for x in example_inputs), is_cuda,
               tuple(sorted((k, _signature(v)) for k, v in kwargs.items())))
        hash(key)
    except (TypeError, ValueError):
        return None
    return key


def _text(v) -> str:
    """``v`` as text that is the same in every process (no addresses, no hash order); TypeError if
    there is none (then the graph is cached in memory only)."""
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return repr(v)
    if isinstance(v, tuple):
        return "(" + ",".join(_text(x) for x in v) + ",)"
    if isinstance(v, (torch.dtype, torch.device)):
        return f"torch:{v}"
    if isinstance(v, types.CodeType):
        return f"code:{v.co_name}:{v.co_code.hex()}:{_text(v.co_consts)}:{_text(v.co_names)}"
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType)):
        owner = getattr(v, "__self__", None)
        owner = "" if owner is None or isinstance(owner, types.ModuleType) else type(owner).__qualname__
        return f"function:{v.__module__}.{v.__qualname__}@{owner}"
    if isinstance(v, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return f"op:{v}"
    raise TypeError(f"no process-independent text for {type(v).__name__}")


def _file_name(pattern, key: tuple) -> str | None:
    """A memory key as a file name valid in any process (with the torch and torchao versions), or None."""
    fn = _function(pattern)
    try:
        text = _text((torch.__version__, torchao.__version__, fn.__module__, fn.__qualname__, *key))
    except TypeError:
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def disk_key(pattern, example_inputs: tuple, is_cuda: bool, kwargs: dict) -> str | None:
    """``memory_key`` as a file name valid in any process, or None."""
    key = memory_key(pattern, example_inputs, is_cuda, kwargs)
    return None if key is None else _file_name(pattern, key)


@contextlib.contextmanager
def _exports_through(export):
    """torch.export.export is ``export`` inside the block (torchao's builder calls it by attribute)."""
    real = torch.export.export
    torch.export.export = export
    try:
        yield
    finally:
        torch.export.export = real


def _load(path: Path):
    if not path.exists():
        return None
    try:
        return torch.export.load(path)
    except Exception:  # a truncated or foreign entry: exported again and overwritten
        return None


def _save(program, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".pt2")  # torch wants .pt2
        os.close(fd)
        try:
            torch.export.save(program, tmp)
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old entry or the whole new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except Exception:  # a read-only or full disk, or a program torch cannot serialise: memory only
        pass


def _build_through_disk(build, directory: Path, name: str, pattern, example_inputs, is_cuda, kwargs):
    """torchao's builder, with its one torch.export call answered from ``directory/name`` when saved
    there, else recorded and saved."""
    path = directory / f"{name}.pt2"
    program = _load(path)
    if program is not None:
        with _exports_through(lambda *a, **k: program):
            return build(pattern, example_inputs, is_cuda, **kwargs)
    real, exported = torch.export.export, []

    def record(*args, **kw):
        exported.append(real(*args, **kw))
        return exported[-1]

    with _exports_through(record):
        graph = build(pattern, example_inputs, is_cuda, **kwargs)
    if len(exported) == 1:  # a builder that exported twice could not be replayed from one program
        _save(exported[0], path)
    return graph


def cached_pattern_graphs(build, directory: Path | None):
    """``build`` (torchao's ``_get_aten_graph_module_for_pattern``) memoised in this process and, if
    ``directory`` is not None, on disk there. ``.uncached`` is torchao's builder, ``.graphs`` what the
    memory holds, ``.directory`` may be changed (None: memory only)."""
    graphs: dict = {}

    def cached(pattern, example_inputs, is_cuda=False, **kwargs):
        key = memory_key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return build(pattern, example_inputs, is_cuda, **kwargs)
        if key not in graphs:
            name = _file_name(pattern, key) if cached.directory is not None else None
            graphs[key] = (build(pattern, example_inputs, is_cuda, **kwargs) if name is None else
                           _build_through_disk(build, cached.directory, name, pattern, example_inputs, is_cuda,
                                               kwargs))
        return copy.deepcopy(graphs[key])

    cached.uncached = build
    cached.graphs = graphs
    cached.directory = directory
    return cached


def _route(builder) -> None:
    for name in BUILDER_MODULES:
        mod = importlib.import_module(f"torchao.quantization.pt2e.{name}")
        if hasattr(mod, BUILDER):
            setattr(mod, BUILDER, builder)


def installed():
    """The installed cache (see ``cached_pattern_graphs``), or None."""
    from torchao.quantization.pt2e import utils as pt2e_utils

    build = getattr(pt2e_utils, BUILDER, None)
    return build if hasattr(build, "uncached") else None


@contextlib.contextmanager
def uncached():
    """torchao's own, uncached pattern builder inside the block (to compare against the cache)."""
    cache = installed()
    _route(cache.uncached)
    try:
        yield
    finally:
        _route(cache)


def install() -> None:
    """Route every torchao module that bound the pattern builder by name through one cache."""
    from torchao.quantization.pt2e import utils as pt2e_utils

    build = getattr(pt2e_utils, BUILDER, None)
    if build is not None and installed() is None:  # None: another torchao layout
        _route(cached_pattern_graphs(build, default_directory()))
