"""Small JAX helpers shared by every layer: float64 scoping, keys and dtypes.

mixlab computes in float64 by default without touching the user's global
``jax_enable_x64`` flag: public entry points run inside ``jax.enable_x64(True)``
and hand back NumPy arrays, which keep their float64 precision whatever the
global setting is.  Called inside a user's own ``jax.jit`` trace, the same
functions run in the caller's dtype and return JAX arrays, so they compose.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

KeyLike = int | np.integer | jax.Array


def _contains_tracer(tree: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def to_numpy(tree: Any) -> Any:
    """Convert every JAX array leaf of ``tree`` to a NumPy array."""
    return jax.tree_util.tree_map(
        lambda leaf: np.asarray(leaf) if isinstance(leaf, jax.Array) else leaf, tree
    )


def float64_scope(fn: F) -> F:
    """Run ``fn`` with 64-bit types enabled and return NumPy arrays.

    Inside a trace (any argument is a tracer) ``fn`` runs unchanged so that it
    composes with the caller's ``jit``/``vmap``/``grad``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _contains_tracer((args, kwargs)):
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return to_numpy(fn(*args, **kwargs))

    return wrapper  # type: ignore[return-value]


def x64_scope(fn: F) -> F:
    """Like :func:`float64_scope` but leaves the outputs as they are."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _contains_tracer((args, kwargs)):
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def device_copy(a: np.ndarray) -> jax.Array:
    """A JAX array holding a copy of the NumPy array ``a`` on the default device.

    ``jax.device_put(a, may_alias=False)`` is the fast way (one transfer), but
    on CPU with jax 0.10 it still hands back the caller's memory when ``a`` is
    64-byte aligned (about half of NumPy's arrays): later changes to ``a`` would
    show through.  Such a result is copied once more on the device.
    """
    out = jax.device_put(a, may_alias=False)
    try:
        aliased = out.unsafe_buffer_pointer() == a.ctypes.data
    except Exception:  # several devices, or a backend without pointers: not the CPU alias
        aliased = False
    return jnp.copy(out) if aliased else out


def as_key(key: KeyLike, name: str = "key") -> jax.Array:
    """Turn an int seed or a JAX PRNG key into a raw ``uint32[2]`` key.

    Raises
    ------
    TypeError
        If ``key`` is neither an integer nor a JAX PRNG key.
    """
    if isinstance(key, bool):
        raise TypeError(f"{name} must be an int seed or a jax.random key, got a bool")
    if isinstance(key, numbers.Integral):
        if int(key) < 0:
            raise ValueError(f"{name} must be a non-negative int seed, got {int(key)}")
        if int(key) >= 2**63:
            raise ValueError(f"{name} must be below 2**63, got {int(key)}")
        seed = int(key)
        if jax.config.jax_default_prng_impl == "threefry2x32":
            # jax.random.PRNGKey(seed) under 64-bit types, written out: the high and the
            # low 32 bits.  Made on the host, a key needs no compiled program (tens of
            # milliseconds in a new process).
            words = np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32)
            return jax.device_put(words)
        with jax.enable_x64(True):  # 64-bit seeds map to distinct keys
            return jax.random.PRNGKey(seed)
    if isinstance(key, jax.Array | np.ndarray):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(
                    f"{name} must be a single key, got a key array of shape {key.shape}"
                )
            return jax.random.key_data(key)
        if key.shape == (2,) and key.dtype == np.uint32:
            return jnp.asarray(key)
        raise ValueError(
            f"{name} must be an int seed or a jax.random key (uint32 of shape (2,)); "
            f"got an array of shape {key.shape} and dtype {key.dtype}"
        )
    raise TypeError(
        f"{name} must be an int seed or a jax.random key, got {type(key).__name__}; "
        "pass e.g. key=0 or key=jax.random.PRNGKey(0)"
    )


def resolve_dtype(dtype: Any, like: Any = None) -> np.dtype:
    """The floating dtype mixlab computes in.

    ``dtype=None`` keeps float32 input as float32 and uses float64 for
    everything else (float64, integers, lists).
    """
    if dtype is None:
        if like is not None and getattr(like, "dtype", None) in (np.float32, jnp.float32):
            return np.dtype(np.float32)
        return np.dtype(np.float64)
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def tiny(dtype: Any) -> float:
    """Ten machine epsilons, the guard scikit-learn adds to component counts."""
    return float(10 * np.finfo(dtype).eps)


#: Environment variable naming the persistent compilation cache directory;
#: ``off`` (or ``0``, ``false``, ``none``, empty) switches the cache off.
CACHE_ENV = "MIXLAB_CACHE_DIR"
_CACHE_OFF = {"", "0", "off", "false", "no", "none"}
_persistent = {"checked": False, "dir": None, "hits": 0, "program_hits": 0}


def cache_directory() -> str | None:
    """Where mixlab keeps compiled programs between processes (``None``: nowhere).

    ``$MIXLAB_CACHE_DIR`` when set (``off`` disables), else a per-user cache
    directory: ``$XDG_CACHE_HOME/mixlab/jax`` (default ``~/.cache``) on Linux,
    ``~/Library/Caches/mixlab/jax`` on macOS, ``%LOCALAPPDATA%\\mixlab\\jax``
    on Windows.
    """
    import os
    import sys

    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in _CACHE_OFF else os.path.expanduser(env)
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~/AppData/Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "mixlab", "jax")


def _count_cache_hits(event: str, **kwargs: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _persistent["hits"] += 1


def use_persistent_cache() -> str | None:
    """Point JAX's persistent compilation cache at :func:`cache_directory`, once.

    A second Python process then loads mixlab's compiled programs from disk
    instead of compiling them again (seconds for an EM program): from mixlab's
    own program store in the ``mixlab-programs`` folder of the directory in use
    (:mod:`mixlab._programs`, no tracing), or else from JAX's cache.  A cache
    directory the user configured in JAX (``jax_compilation_cache_dir``) is
    used as it is; mixlab sets JAX's directory (and caches every program, not
    only those that took over a second) only when none is configured, so that
    is the one global JAX setting mixlab may change.  Returns the directory in
    use, or ``None``.
    """
    if _persistent["checked"]:
        return _persistent["dir"]
    _persistent["checked"] = True
    jax.monitoring.register_event_listener(_count_cache_hits)
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        _persistent["dir"] = configured
        return configured
    path = cache_directory()
    if path is None:
        return None
    import os

    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # read-only home, say: run without the cache
        return None
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # A program compiled before this point made JAX decide there is no cache.
    compilation_cache.reset_cache()
    _persistent["dir"] = path
    return path


class Compiled(NamedTuple):
    """A compiled program and how it was obtained."""

    program: Any
    seconds: float  # compiling, or loading from the persistent cache
    source: str  # "memory" (this process had it), "disk" (persistent cache), "compiled"


class CompiledCache:
    """Ahead-of-time compiled programs keyed by (settings, argument shapes), LRU.

    ``get(key, fn, args)`` returns a :class:`Compiled`: the program, the
    seconds spent compiling it (0.0 when this process had it already) and
    where it came from, so callers report compile time apart from run time.
    Programs compiled in an earlier process come from JAX's persistent cache
    (:func:`use_persistent_cache`).
    """

    def __init__(self, size: int = 32) -> None:
        from collections import OrderedDict

        self.size = size
        self._programs: OrderedDict[Any, Any] = OrderedDict()

    @staticmethod
    def signature(args: Any) -> tuple[Any, ...]:
        leaves, treedef = jax.tree_util.tree_flatten(args)
        return (
            treedef,
            tuple(
                (
                    np.shape(a),
                    str(np.asarray(a).dtype) if not hasattr(a, "dtype") else str(a.dtype),
                    a.sharding if isinstance(a, jax.Array) else None,  # a program per layout
                )
                for a in leaves
            ),
        )

    def get(self, key: Any, fn: Callable[..., Any], args: tuple) -> Compiled:
        import time

        full_key = (key, self.signature(args))
        if full_key in self._programs:
            self._programs.move_to_end(full_key)
            return Compiled(self._programs[full_key], 0.0, "memory")
        from mixlab import _programs

        start = time.perf_counter()
        compiled, source = _programs.compile_or_load(key, fn, args, use_persistent_cache())
        if source == "store":
            source = "disk"
            _persistent["program_hits"] += 1
        seconds = time.perf_counter() - start
        self._programs[full_key] = compiled
        while len(self._programs) > self.size:
            self._programs.popitem(last=False)
        return Compiled(compiled, seconds, source)

    def clear(self) -> None:
        self._programs.clear()


class Progress:
    """Progress bars fed from compiled programs through ``jax.debug.callback``.

    Compiled programs are cached and outlive any one bar, so they report to
    this class, which forwards to the bar of the run in progress (if any).
    """

    bar: Any = None

    @classmethod
    def update(cls, i: Any) -> None:
        """Move the bar to step ``i + 1``, forward only: batched restarts or chains
        each report their own step, and the bar shows the furthest.  tqdm redraws at
        most every 0.1 s."""
        bar = cls.bar
        if bar is not None and int(i) + 1 > bar.n:
            bar.update(int(i) + 1 - bar.n)

    @staticmethod
    def wanted(enabled: bool | None) -> bool:
        """``progress=None`` (the default): a bar only when stderr is a terminal, so
        logs and pipes get none."""
        if enabled is None:
            import sys

            stream = sys.stderr
            return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())
        return bool(enabled)

    @staticmethod
    def every(total: int, enabled: bool | None) -> int:
        """Report period for a loop of ``total`` steps (0: no reports)."""
        return max(1, total // 50) if Progress.wanted(enabled) else 0

    @staticmethod
    def report(i: Any, every: int, total: int) -> None:
        """Inside a traced loop: report step ``i`` every ``every`` steps and at the end."""
        if every:
            jax.lax.cond(
                (i % every == 0) | (i == total - 1),
                lambda: jax.debug.callback(Progress.update, i),
                lambda: None,
            )

    @classmethod
    def run(cls, compiled: Any, args: tuple, total: int, desc: str, enabled: bool | None) -> tuple:
        """Call ``compiled(*args)`` with a bar over ``total`` steps; returns (out, seconds)."""
        import time

        bar = None
        if Progress.wanted(enabled):
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=desc)
        cls.bar = bar
        try:
            start = time.perf_counter()
            out = jax.block_until_ready(compiled(*args))
            return out, time.perf_counter() - start
        finally:
            cls.bar = None
            if bar is not None:
                bar.close()
