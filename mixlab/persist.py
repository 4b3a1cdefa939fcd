"""Saving and loading fit results in an open format that runs no code when read.

A result is one ``.npz`` file (a zip of ``.npy`` arrays, readable by any NumPy)
holding every array, plus a JSON document in the array ``__meta__``: the
format tag and version, the mixlab version, the scalars, the settings, the
layout of nested diagnostics, and a SHA-256 digest of every array.  Reading
uses ``np.load(..., allow_pickle=False)``, so loading never executes code; a
truncated or corrupted file, or one from an unknown format version, raises
:class:`mixlab.errors.LoadError` saying which.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mixlab._version import __version__
from mixlab.errors import LoadError
from mixlab.families import get_family
from mixlab.params import MixtureParams

FORMAT = "mixlab-fit"
#: 2: parameters of any family (weights, components by name, family name and options).
#: 1: Gaussian only (weights, means, covariances, prec_chol); still read.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def _digest(array: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _encode(obj: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """JSON skeleton of ``obj``; arrays go to ``arrays`` under their path."""
    if isinstance(obj, MixtureParams):
        return {
            "__mixture__": {
                "weights": _encode(obj.weights, f"{path}/weights", arrays),
                "components": {
                    k: _encode(v, f"{path}/{k}", arrays) for k, v in obj.components.items()
                },
            },
            "family": obj.family.name,
            "options": obj.family.options(),
        }
    if isinstance(obj, np.ndarray) or (hasattr(obj, "__array__") and not np.isscalar(obj)):
        array = np.asarray(obj)
        if array.dtype == object:
            raise TypeError(f"cannot save an object array at {path!r}")
        arrays[path] = array
        return {"__array__": path}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"cannot save a dict with non-string keys at {path!r}")
        return {"__dict__": {k: _encode(v, f"{path}/{k}", arrays) for k, v in obj.items()}}
    if isinstance(obj, list | tuple):
        return {
            "__list__": [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)],
            "tuple": isinstance(obj, tuple),
        }
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer | int):
        return int(obj)
    if isinstance(obj, np.floating | float):
        return float(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot save a {type(obj).__name__} at {path!r}")


def _family(name: str, options: dict[str, Any]) -> Any:
    try:
        return get_family(name, **options)
    except (ValueError, TypeError) as exc:
        raise LoadError(
            f"the saved fit is of family {name!r} with options {options}, which this mixlab "
            f"cannot build ({exc}); a family defined in your own code must be imported "
            "(registered) before loading"
        ) from None


def _decode(node: Any, arrays: Any) -> Any:
    if isinstance(node, dict):
        if "__array__" in node:
            return arrays[node["__array__"]]
        if "__mixture__" in node:
            body = node["__mixture__"]
            family = _family(node["family"], node.get("options", {}))
            components = {k: _decode(v, arrays) for k, v in body["components"].items()}
            return MixtureParams.trusted(_decode(body["weights"], arrays), components, family)
        if "__params__" in node:  # format version 1: Gaussian
            fields = {k: _decode(v, arrays) for k, v in node["__params__"].items()}
            family = _family("gaussian", {"covariance": node["covariance_type"]})
            return MixtureParams.trusted(
                fields["weights"],
                {"means": fields["means"], "covariances": fields["covariances"]},
                family,
            )
        if "__dict__" in node:
            return {k: _decode(v, arrays) for k, v in node["__dict__"].items()}
        if "__list__" in node:
            items = [_decode(v, arrays) for v in node["__list__"]]
            return tuple(items) if node["tuple"] else items
        raise LoadError(f"unexpected entry in the saved layout: {sorted(node)}")
    return node


_SCALARS = (
    "method",
    "log_likelihood",
    "converged",
    "n_iter",
    "elapsed",
    "n_samples",
    "compile_time",
)
_TREES = ("params", "trace", "posterior", "params_trace", "restarts", "settings", "diagnostics")


def save_result(result: Any, path: str | os.PathLike, include_data: bool = False) -> Path:
    """Write ``result`` to ``path`` (see the module docstring); returns the path."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    tree = {
        name: _encode(getattr(result, name), name, arrays) for name in _TREES if name != "restarts"
    }
    restarts = result.restarts
    tree["restarts"] = (
        None
        if restarts is None
        else _encode(
            {
                f: getattr(restarts, f)
                for f in ("log_likelihood", "converged", "n_iter", "status", "best", "keys")
            },
            "restarts",
            arrays,
        )
    )
    if include_data and result.data is not None:
        tree["data"] = _encode(np.asarray(result.data), "data", arrays)
    if result.sample_weight is not None:
        tree["sample_weight"] = _encode(np.asarray(result.sample_weight), "sample_weight", arrays)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mixlab_version": result.mixlab_version,
        "scalars": {name: _encode(getattr(result, name), name, arrays) for name in _SCALARS},
        "tree": tree,
        "features": {
            "names": None if result.feature_names is None else list(result.feature_names),
            "units": None if result.feature_units is None else list(result.feature_units),
        },
        "digests": {name: _digest(a) for name, a in arrays.items()},
    }
    payload = {f"a{i}": a for i, a in enumerate(arrays.values())}
    meta["names"] = {name: f"a{i}" for i, name in enumerate(arrays)}
    payload["__meta__"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mixlab-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; save like open() would
        os.replace(tmp, path)  # atomic: a crash never leaves half a file behind
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read a saved result; returns the ``FitResult`` constructor arguments."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved mixlab result at {path}")
    try:
        # our own handle, so it is closed even when np.load fails half-way
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            files = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise LoadError(
            f"{path} is not a readable mixlab result: the file is truncated, corrupted or "
            f"not a .npz written by FitResult.save ({type(exc).__name__}: {exc})"
        ) from None
    if "__meta__" not in files:
        raise LoadError(f"{path} is a .npz file but not a mixlab result (no metadata)")
    try:
        meta = json.loads(str(files["__meta__"]))
    except json.JSONDecodeError as exc:
        raise LoadError(f"{path}: the metadata is corrupted ({exc})") from None
    if meta.get("format") != FORMAT:
        raise LoadError(f"{path} holds {meta.get('format')!r}, not a mixlab fit result")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise LoadError(
            f"{path} was written in mixlab result format {version} (mixlab "
            f"{meta.get('mixlab_version')}); this mixlab {__version__} reads formats "
            f"{', '.join(map(str, READABLE_VERSIONS))}: load it with a matching mixlab version"
        )
    arrays = {}
    for name, key in meta["names"].items():
        if key not in files:
            raise LoadError(f"{path}: array {name!r} is missing (the file is incomplete)")
        array = files[key]
        if _digest(array) != meta["digests"].get(name):
            raise LoadError(f"{path}: array {name!r} is corrupted (its checksum does not match)")
        arrays[name] = array
    tree = meta["tree"]
    values = {name: _decode(node, arrays) for name, node in meta["scalars"].items()}
    for name in ("params", "trace", "posterior", "params_trace", "settings", "diagnostics"):
        values[name] = _decode(tree[name], arrays)
    values["restarts"] = _decode(tree["restarts"], arrays)
    values["data"] = _decode(tree["data"], arrays) if "data" in tree else None
    values["sample_weight"] = (
        _decode(tree["sample_weight"], arrays) if "sample_weight" in tree else None
    )
    params = values["params"]
    try:  # a result whose parameters do not validate is not loaded silently
        MixtureParams(params.weights, family=params.family, components=params.components)
    except (ValueError, TypeError) as exc:
        raise LoadError(f"{path}: the saved parameters are invalid ({exc})") from None
    values["mixlab_version"] = meta.get("mixlab_version")
    features = meta.get("features") or {}  # absent in files of mixlab before names
    for name in ("names", "units"):
        given = features.get(name)
        values[f"feature_{name}"] = None if given is None else tuple(map(str, given))
    return values
