"""Compiled programs on disk, keyed by mixlab's own settings: no tracing in a new process.

JAX's persistent compilation cache is keyed by the lowered program, so a new
Python process still traces and lowers every program before the cache can
answer (about half a second for an EM program, against 0.15 s to load it).
This store keys a program by what determines it instead, and keeps the
serialized executable itself:

* mixlab's static settings of the program (the key ``CompiledCache`` gets:
  family, component count, options) and the function, described by
  :func:`stable_description`, which answers only for values whose description
  is the same in every process (numbers, strings, tuples, NumPy arrays,
  mixlab's own families, named tuples and module-level functions); a key
  holding anything else (a user's family class, a closure, a lambda) gets no
  entry, and such programs use JAX's cache alone;
* the arguments' tree, shapes and dtypes;
* a fingerprint of mixlab's source (every ``.py`` file of the package, so an
  edited or upgraded mixlab never loads an old program), the JAX and jaxlib
  versions, the backend and device, the JAX settings that change what is
  traced (64-bit types, default matmul precision, the PRNG implementation,
  every other JAX flag), and ``XLA_FLAGS``.

Only single-process programs on one device, with no host callbacks and no
side effects, are stored.  The executable is serialized right after
compiling, before it first runs (XLA:CPU executables cannot be serialized
once they have run).  Files are written atomically into a ``mixlab-programs``
folder of the cache directory in use (:func:`mixlab._jaxutil.use_persistent_cache`);
the least recently used go when the folder passes :data:`MAX_FILES` files or
:data:`MAX_BYTES` bytes.  A file that cannot be read or loaded is removed and
the program compiled as before: the store can only save time, never change a
result.  As with JAX's own cache, the files are executable code: keep the
cache directory private (it is per user by default).  ``MIXLAB_PROGRAM_STORE=off``
switches the store off and leaves JAX's cache on.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import os
import pickle
import tempfile
import zlib
from typing import Any, NamedTuple

import jax
import numpy as np

#: Version of the file layout; part of every key.
FORMAT = 1
FOLDER = "mixlab-programs"
#: Limits of the folder: the least recently used programs go beyond them.
MAX_FILES = 256
MAX_BYTES = 512 * 2**20

_state: dict[str, Any] = {"source": None, "failed": set()}


def _ours(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "mixlab" or module.startswith("mixlab.")


def stable_description(obj: Any) -> str | None:
    """A description of ``obj`` that is the same in every Python process, or
    ``None`` when ``obj`` holds something whose description might not be."""
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return repr(obj)
    if isinstance(obj, np.dtype):
        return f"dtype({obj.str})"
    if isinstance(obj, np.generic):
        return f"{obj.dtype.str}:{obj.item()!r}"
    if isinstance(obj, np.ndarray | jax.Array):
        a = np.ascontiguousarray(np.asarray(obj))
        if a.dtype == object:
            return None
        return f"array({a.dtype.str},{a.shape},{hashlib.sha256(a.tobytes()).hexdigest()})"
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__module__}.{type(obj).__qualname__}.{obj.name}"
    if isinstance(obj, type):
        return f"class:{obj.__module__}.{obj.__qualname__}" if _ours(obj) else None
    if isinstance(obj, functools.partial):
        parts = [stable_description(v) for v in (obj.func, *obj.args)]
        keywords = {k: stable_description(v) for k, v in obj.keywords.items()}
        if None in parts or None in keywords.values():
            return None
        parts += [f"{k}={v}" for k, v in sorted(keywords.items())]
        return "partial(" + ",".join(parts) + ")"  # type: ignore[arg-type]
    if callable(obj) and hasattr(obj, "__qualname__") and not isinstance(obj, tuple):
        name = obj.__qualname__
        if not _ours(obj) or "<" in name:  # a user's function, a closure or a lambda
            return None
        return f"function:{obj.__module__}.{name}"
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        if not _ours(type(obj)):
            return None
        fields = [stable_description(v) for v in obj]
        if None in fields:
            return None
        named = ",".join(f"{f}={v}" for f, v in zip(obj._fields, fields, strict=True))
        return f"{type(obj).__module__}.{type(obj).__qualname__}({named})"
    if isinstance(obj, tuple | list | frozenset | set):
        items = [stable_description(v) for v in obj]
        if None in items:
            return None
        if isinstance(obj, frozenset | set):
            items = sorted(items)  # type: ignore[type-var]
        return f"{type(obj).__name__}(" + ",".join(items) + ")"  # type: ignore[arg-type]
    if isinstance(obj, dict):
        items = [(stable_description(k), stable_description(v)) for k, v in obj.items()]
        if any(k is None or v is None for k, v in items):
            return None
        return "dict(" + ",".join(f"{k}:{v}" for k, v in sorted(items)) + ")"  # type: ignore[type-var]
    if not _ours(type(obj)):
        return None
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    options = getattr(obj, "options", None)
    if callable(options):  # a mixlab family: its type and options
        described = stable_description(options())
    elif dataclasses.is_dataclass(obj):
        described = stable_description(
            {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        )
    else:
        return None
    return None if described is None else kind + described


def source_fingerprint() -> str:
    """SHA-256 of every ``.py`` file of the installed mixlab package (once per process)."""
    if _state["source"] is None:
        root = os.path.dirname(os.path.abspath(__file__))
        digest = hashlib.sha256()
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    digest.update(os.path.relpath(path, root).encode())
                    with open(path, "rb") as f:
                        digest.update(f.read())
        _state["source"] = digest.hexdigest()
    return _state["source"]


@functools.lru_cache(maxsize=1)
def _versions() -> str:
    """Versions of the libraries whose code a program may trace."""
    from importlib import metadata

    found = []
    for name in ("jax", "jaxlib", "numpy", "numpyro"):
        try:
            found.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name}=none")
    return ",".join(found)


def _environment(device: Any) -> str | None:
    from jax._src import config as jax_config

    flags = []
    for name, value in sorted(jax.config.values.items()):
        if "cache" in name or "log" in name:  # where things are kept, what is printed
            continue
        described = stable_description(value)
        flags.append(f"{name}={described if described is not None else type(value).__name__}")
    client = device.client
    return "|".join(
        [
            f"format={FORMAT}",
            f"mixlab={source_fingerprint()}",
            f"jax={jax.__version__}",
            _versions(),
            f"platform={client.platform}:{client.platform_version}",
            f"device={device.platform}:{device.device_kind}:{device.id}",
            f"x64={jax_config.enable_x64.value}",
            f"matmul={jax_config.default_matmul_precision.value}",
            f"prng={jax_config.default_prng_impl.value}",
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}",
            *flags,
        ]
    )


def _device_of(args: Any) -> Any:
    """The one device the program runs on, or ``None`` when the arguments span several."""
    devices = _devices(args)
    if len(devices) > 1:
        return None
    if devices:
        return devices.pop()
    return jax.devices()[0] if jax.config.jax_default_device is None else None


class Entry(NamedTuple):
    """Where a program is stored: its file name (a SHA-256) and the one device it runs on."""

    name: str
    device: Any

    @property
    def platform(self) -> str:
        return self.device.platform


def program_key(key: Any, fn: Any, args: Any) -> Entry | None:
    """The store entry of a program, or ``None`` when it cannot be stored."""
    if jax.process_count() > 1:
        return None
    device = _device_of(args)
    if device is None:
        return None
    described = stable_description((key, fn))
    if described is None:
        return None
    leaves, treedef = jax.tree_util.tree_flatten(args)
    shapes = ",".join(
        f"{np.shape(a)}:{np.dtype(a.dtype if hasattr(a, 'dtype') else type(a)).str}"
        f"{':weak' if getattr(a, 'weak_type', False) or not hasattr(a, 'dtype') else ''}"
        for a in leaves
    )
    environment = _environment(device)
    if environment is None:
        return None
    text = "\n".join([described, str(treedef), shapes, environment])
    return Entry(hashlib.sha256(text.encode()).hexdigest(), device)


def named(fn: Any, name: str) -> Any:
    """``fn`` under a name that carries the program's key (``_program_1a2b3c4d5e6f``):
    JAX names the compiled module after it, so JAX's own cache holds it apart."""
    base = getattr(fn.func if isinstance(fn, functools.partial) else fn, "__name__", "program")

    def program(*args: Any) -> Any:
        return fn(*args)

    program.__name__ = program.__qualname__ = f"{base}_{name[:12]}"
    return program


#: Environment variable that switches the store off (``off``), leaving JAX's cache on.
STORE_ENV = "MIXLAB_PROGRAM_STORE"


def compile_or_load(key: Any, fn: Any, args: tuple, cache_dir: str | None) -> tuple[Any, str]:
    """``jax.jit(fn)`` compiled for ``args``, and where it came from: ``"store"`` (this
    store), ``"disk"`` (JAX's persistent cache) or ``"compiled"``.

    A program to be stored is named after its key, so JAX's cache (keyed by the
    program, its name included) cannot answer for it: one loaded from there
    serializes without its code (jax 0.10, CPU).  It is stored right after
    compiling, before it first runs.  A program over several CPU devices keeps
    out of JAX's cache altogether: loaded from there, its collectives wait for
    each other forever (jax 0.10.2; XLA aborts the process after 40 s).
    """
    from jax._src import config as jax_config

    store = folder(cache_dir)
    try:
        entry = None if store is None else program_key(key, fn, args)
    except Exception:  # the store only ever saves time: a key it cannot make means no entry
        entry = None
    if entry is not None:
        loaded = load(store, entry.name, entry.device)  # type: ignore[arg-type]
        if loaded is not None:
            return Checked(loaded, fn, os.path.join(store, entry.name)), "store"  # type: ignore[arg-type]
        fn = named(fn, entry.name)
    hits = _cache_hits()
    if cache_dir is not None and _several_cpu_devices(args):
        with jax_config.persistent_cache_min_compile_time_secs(float("inf")):  # no entry
            compiled = jax.jit(named(fn, "uncached")).lower(*args).compile()
        return compiled, "compiled"
    compiled = jax.jit(fn).lower(*args).compile()
    if _cache_hits() > hits:
        return compiled, "disk"
    if entry is not None:
        save(store, entry.name, compiled, entry.platform)  # type: ignore[arg-type]
    return compiled, "compiled"


def _cache_hits() -> int:
    from mixlab._jaxutil import _persistent

    return _persistent["hits"]


def _devices(args: Any) -> set[Any]:
    """The devices the JAX arrays among ``args`` lie on."""
    devices: set[Any] = set()
    for leaf in jax.tree_util.tree_leaves(args):
        if isinstance(leaf, jax.Array):
            devices |= set(leaf.sharding.device_set)
    return devices


def _several_cpu_devices(args: Any) -> bool:
    devices = _devices(args)
    return len(devices) > 1 and any(d.platform == "cpu" for d in devices)


def folder(cache_dir: str | None) -> str | None:
    """The store's folder inside ``cache_dir`` (``None``: no store: no cache directory,
    or ``$MIXLAB_PROGRAM_STORE`` is ``off``)."""
    if cache_dir is None:
        return None
    if os.environ.get(STORE_ENV, "").strip().lower() in {"0", "off", "false", "no", "none"}:
        return None
    return os.path.join(cache_dir, FOLDER)


def _prepare(targets: tuple[str, ...], platform: str) -> bool:
    """Make this process ready to run a program calling ``targets`` (XLA custom
    calls) without having traced it; ``False`` when a target is not known to be safe.

    Tracing registers and initialises what custom calls need (LAPACK's function
    table on CPU, for Cholesky factors and triangular solves); a loaded program
    skips tracing, so that happens here, and a program calling anything not
    vetted here is compiled instead: running it could crash the process.
    """
    for target in targets:
        if not (platform == "cpu" and target.startswith("lapack_")):
            return False
    if targets:
        try:
            _preload_lapack_tables()
            from jax._src.lax import linalg

            linalg.initialize_lapack()
        except Exception:
            return False
    return True


def _preload_lapack_tables() -> None:
    """Load SciPy's two LAPACK/BLAS function-table extensions, which jaxlib's LAPACK
    set-up imports by name, without running ``scipy.linalg``'s package ``__init__``
    (0.3 s of SciPy's array-API set-up, most of a loaded fit).  Anything unexpected
    leaves it to the ordinary import."""
    import importlib.machinery
    import importlib.util
    import sys

    if "scipy.linalg" in sys.modules:
        return
    try:
        spec = importlib.util.find_spec("scipy")
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "linalg")
    for module in ("cython_blas", "cython_lapack"):
        name = f"scipy.linalg.{module}"
        if name in sys.modules:
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, module + suffix)
            if os.path.exists(path):
                found = importlib.util.spec_from_file_location(name, path)
                if found is None or found.loader is None:
                    return
                loaded = importlib.util.module_from_spec(found)
                found.loader.exec_module(loaded)
                sys.modules[name] = loaded
                break
        else:
            return


def custom_calls(compiled: Any) -> tuple[str, ...]:
    """The XLA custom-call targets a compiled program calls."""
    import re

    return tuple(sorted(set(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text()))))


def load(directory: str, name: str, device: Any) -> Any:
    """The compiled program stored under ``name``, loaded to run on ``device`` alone,
    or ``None`` (nothing stored, a program this process cannot run safely without
    tracing, or a file that cannot be loaded: it is removed)."""
    from jax.experimental import serialize_executable

    path = os.path.join(directory, name)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    try:
        stored_name, platform, targets, serialized, in_tree, out_tree = pickle.loads(
            zlib.decompress(blob)
        )
        if stored_name != name:
            raise ValueError("file holds another program")
    except Exception:  # a truncated, stale or foreign file: compile instead
        _remove(path)
        return None
    if platform != device.platform or not _prepare(targets, platform):
        return None
    try:
        # On its one device: left to itself, loading spreads a program over every device
        # of the backend, whose collectives then wait forever for the other devices.
        program = serialize_executable.deserialize_and_load(
            serialized, in_tree, out_tree, backend=device.client, execution_devices=[device]
        )
    except Exception:
        _remove(path)
        return None
    try:
        os.utime(path)  # recently used
    except OSError:
        pass
    return program


class Checked:
    """A program loaded from the store, checked on its first call: should it fail to
    run (a file that loaded but cannot run), the file is removed and the program
    compiled from ``fn`` instead, so a bad file costs one compile, never a fit."""

    def __init__(self, program: Any, fn: Any, path: str) -> None:
        self.program, self.fn, self.path, self.checked = program, fn, path, False

    def __call__(self, *args: Any) -> Any:
        if self.checked:
            return self.program(*args)
        try:
            out = jax.block_until_ready(self.program(*args))
        except jax.errors.JaxRuntimeError:
            _remove(self.path)
            self.program = jax.jit(self.fn).lower(*args).compile()
            out = self.program(*args)
        self.checked = True
        return out

    def __getattr__(self, name: str) -> Any:  # the rest of jax.stages.Compiled
        return getattr(self.program, name)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def save(directory: str, name: str, compiled: Any, platform: str) -> bool:
    """Store ``compiled`` (not yet run) under ``name``; ``False`` when it cannot be."""
    from jax.experimental import serialize_executable

    try:
        unloaded = compiled._executable._unloaded_executable
        if unloaded.host_callbacks or unloaded.ordered_effects or unloaded.unordered_effects:
            return False
        targets = custom_calls(compiled)
        if not _prepare(targets, platform):
            return False
        serialized, in_tree, out_tree = serialize_executable.serialize(compiled)
        entry = (name, platform, targets, serialized, in_tree, out_tree)
        blob = zlib.compress(pickle.dumps(entry), 1)
    except Exception:  # not serializable on this backend, or a newer JAX: no entry
        return False
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(handle, "wb") as f:
            f.write(blob)
        os.replace(tmp, os.path.join(directory, name))
        tmp = None
        _evict(directory)
    except OSError:  # a full disk, a read-only directory: no entry, no leftovers
        if tmp is not None:
            _remove(tmp)
        return False
    return True


def _evict(directory: str) -> None:
    """Remove the least recently used programs beyond :data:`MAX_FILES` / :data:`MAX_BYTES`."""
    entries = []
    with os.scandir(directory) as it:
        for entry in it:
            if entry.is_file() and not entry.name.endswith(".tmp"):
                stat = entry.stat()
                entries.append((stat.st_mtime, stat.st_size, entry.path))
    entries.sort(reverse=True)
    total = 0
    for i, (_, size, path) in enumerate(entries):
        total += size
        if i >= MAX_FILES or total > MAX_BYTES:
            _remove(path)
