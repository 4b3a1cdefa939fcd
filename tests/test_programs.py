"""The program store: keys that change with everything that changes a program, and
files that can only save time (mixlab/_programs.py)."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixlab import _programs
from mixlab.em import driver
from mixlab.families import Gaussian, StudentT


def _settings(family=None, n_components=2):
    return driver.EMSettings(family=family or Gaussian(), n_components=n_components, capacity=16)


def _key(settings, args):
    return _programs.program_key(
        settings, functools.partial(driver._program, settings=settings), args
    )


ARGS = (jnp.zeros((3, 4)), np.ones(2))
CPU = jax.devices()[0]


def _fresh(fn, *args):
    """``fn`` compiled here, never loaded from JAX's cache (a unique module name): one
    JAX loaded serializes without its code, and a test run may have JAX's cache on."""
    import uuid

    return jax.jit(_programs.named(fn, uuid.uuid4().hex)).lower(*args).compile()


def test_keys_follow_settings_shapes_dtypes_and_mixlab_source(monkeypatch):
    base = _key(_settings(), ARGS)
    assert base is not None and base.platform == "cpu"
    assert _key(_settings(), ARGS) == base  # stable within the process
    changed = [
        _key(_settings(Gaussian(covariance="diag")), ARGS),
        _key(_settings(n_components=3), ARGS),
        _key(_settings(), (jnp.zeros((3, 5)), np.ones(2))),
        _key(_settings(), (jnp.zeros((3, 4)), np.ones(2, np.float32))),
        _key(_settings(), (jnp.zeros((3, 4)), np.ones(2), 1.0)),
    ]
    with jax.enable_x64(True):
        changed.append(_key(_settings(), ARGS))
    with jax.default_matmul_precision("high"):
        changed.append(_key(_settings(), ARGS))
    monkeypatch.setitem(_programs._state, "source", "an edited mixlab")
    changed.append(_key(_settings(), ARGS))
    names = [c[0] for c in changed]
    assert base[0] not in names and len(set(names)) == len(names)


def test_values_whose_description_may_differ_between_processes_get_no_key():
    class Mine(Gaussian):  # a user's class: its code is not in the fingerprint
        pass

    assert _key(_settings(Mine()), ARGS) is None
    assert _programs.program_key(("k",), lambda x: x, ARGS) is None
    assert _programs.program_key(object(), driver._program, ARGS) is None
    describe = _programs.stable_description
    assert describe(StudentT(dofs=5.0)) != describe(StudentT(dofs=6.0))
    assert describe(np.arange(3.0)) != describe(np.arange(3.0) + 1e-12)
    assert describe({"b": 1, "a": (2, "x")}) == describe({"a": (2, "x"), "b": 1})


def _chol(a):
    return jnp.linalg.cholesky(a).sum(), jnp.linalg.slogdet(a)[1]


def test_a_stored_program_loads_and_gives_the_compiled_programs_result(tmp_path):
    a = np.eye(3) * 2.0 + 0.5
    compiled = _fresh(_chol, a)
    assert _programs.custom_calls(compiled)  # LAPACK: prepared before loading
    assert _programs.save(str(tmp_path), "p", compiled, "cpu")
    loaded = _programs.load(str(tmp_path), "p", CPU)
    assert [float(v) for v in loaded(a)] == [float(v) for v in compiled(a)]
    np.testing.assert_allclose(float(loaded(a)[0]), np.linalg.cholesky(a).sum(), rtol=1e-6)


def test_a_damaged_or_foreign_file_is_removed_and_nothing_is_loaded(tmp_path):
    compiled = _fresh(_chol, np.eye(2))
    assert _programs.save(str(tmp_path), "p", compiled, "cpu")
    os.rename(tmp_path / "p", tmp_path / "q")  # holds another name
    assert _programs.load(str(tmp_path), "q", CPU) is None and not (tmp_path / "q").exists()
    assert _programs.save(str(tmp_path), "p", _fresh(_chol, np.eye(2)), "cpu")
    data = (tmp_path / "p").read_bytes()
    (tmp_path / "p").write_bytes(data[: len(data) // 2])
    assert _programs.load(str(tmp_path), "p", CPU) is None and not (tmp_path / "p").exists()
    assert _programs.load(str(tmp_path), "absent", CPU) is None


def test_programs_with_host_callbacks_are_not_stored(tmp_path):
    def f(x):
        jax.debug.callback(lambda v: None, x)
        return x + 1

    assert not _programs.save(str(tmp_path), "p", jax.jit(f).lower(1.0).compile(), "cpu")
    assert not list(tmp_path.iterdir())


def test_the_least_recently_used_programs_go_beyond_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(_programs, "MAX_FILES", 2)
    for i, name in enumerate("abc"):
        compiled = jax.jit(lambda x, i=i: x + i).lower(1.0).compile()
        assert _programs.save(str(tmp_path), name, compiled, "cpu")
        os.utime(tmp_path / name, (1e9 + i, 1e9 + i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_custom_calls_not_vetted_on_a_platform_keep_a_program_out(tmp_path, platform):
    compiled = jax.jit(_chol).lower(np.eye(2)).compile()
    assert not _programs.save(str(tmp_path), "p", compiled, platform)


def test_a_stored_program_that_loads_but_cannot_run_is_compiled_instead(tmp_path):
    # A program JAX loaded from its own cache serializes without its code (jax 0.10,
    # CPU): such a file loads, then fails on its first call.  The store never writes
    # one (only programs compiled in this process are saved), and if a file like it is
    # ever found the fit still gets the compiled program's result, and the file goes.
    from jax.experimental import serialize_executable

    def f(x):
        return jnp.exp(x) * 2 + x.sum()

    x = np.arange(4.0)
    reloaded = serialize_executable.deserialize_and_load(
        *serialize_executable.serialize(jax.jit(f).lower(x).compile())
    )
    assert _programs.save(str(tmp_path), "p", reloaded, "cpu")
    checked = _programs.Checked(_programs.load(str(tmp_path), "p", CPU), f, str(tmp_path / "p"))
    np.testing.assert_array_equal(np.asarray(checked(x)), np.asarray(f(x)))
    assert not (tmp_path / "p").exists()
    np.testing.assert_array_equal(np.asarray(checked(x + 1)), np.asarray(f(x + 1)))


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31, 2**32 - 1, 2**32, 2**40 + 5, 2**63 - 1])
def test_integer_seeds_give_jax_prng_keys_made_on_the_host(seed):
    # as_key writes jax.random.PRNGKey(seed) out in NumPy (no compiled program in a new
    # process); it must be the same key, 64-bit seeds included.
    from mixlab._jaxutil import as_key

    with jax.enable_x64(True):
        expected = np.asarray(jax.random.PRNGKey(seed))
    got = as_key(seed)
    assert isinstance(got, jax.Array) and got.dtype == np.uint32
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_the_store_can_be_switched_off_alone(monkeypatch, tmp_path):
    assert _programs.folder(str(tmp_path)) == str(tmp_path / "mixlab-programs")
    assert _programs.folder(None) is None
    monkeypatch.setenv("MIXLAB_PROGRAM_STORE", "off")
    assert _programs.folder(str(tmp_path)) is None


def test_a_store_that_cannot_key_or_write_never_stops_a_fit(tmp_path, monkeypatch):
    # The store only ever saves time: a failure to make a key, or to write the file,
    # leaves the program compiled as without it, and no half-written file behind.
    def broken(*args, **kwargs):
        raise RuntimeError("no key")

    with monkeypatch.context() as patch:
        patch.setattr(_programs, "program_key", broken)
        compiled, source = _programs.compile_or_load("k", _chol, (np.eye(2),), str(tmp_path))
    assert source == "compiled" and not (tmp_path / "mixlab-programs").exists()
    np.testing.assert_allclose(float(compiled(np.eye(2))[0]), 2.0)

    (tmp_path / "a file").write_text("not a folder")
    assert not _programs.save(str(tmp_path / "a file"), "p", _fresh(_chol, np.eye(2)), "cpu")

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    store = tmp_path / "store"
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", full_disk)
        assert not _programs.save(str(store), "p", _fresh(_chol, np.eye(2)), "cpu")
    assert list(store.iterdir()) == []
