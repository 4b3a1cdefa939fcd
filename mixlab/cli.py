"""The ``mixlab`` command: argument parsing, reading data, writing outputs, printing.

    mixlab fit DATA -k K [--method em|svi|nuts] [--family F] [--covariance TYPE]
                         [--weights COLUMN] [--n-init N] [--columns a,b]
                         [--drop-missing] [--out DIR] [--quiet]
    mixlab compare DATA -k K [...]      EM, SVI and NUTS side by side
    mixlab demo [--out DIR]             compare on Old Faithful, with plots
    mixlab bench [-n N -k K -d D]       EM speed against scikit-learn

``DATA`` is a CSV file (with or without a header), a ``.npy`` file, or the
name of an embedded data set (``faithful``, ``galaxies``, ``quine``,
``lsat6``).  Bad input prints
one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- reading data
def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_data(
    source: str, columns: list[str] | None = None, drop_missing: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Read ``source`` into a float array and its column names.

    Raises :class:`CLIError` with a one-line message for every user error.
    """
    from mixlab import datasets

    if source in datasets.available() and not Path(source).exists():
        frame = datasets.load(source, as_frame=True)
        names = [c for c in frame.columns if frame[c].dtype.kind in "fiub"]
        X = frame[names].to_numpy(dtype=np.float64)
        return _select(X, names, columns or datasets.columns(source), drop_missing, source)
    path = Path(source)
    if not path.exists():
        hint = f"; embedded data sets: {', '.join(datasets.available())}"
        raise CLIError(f"no such file: {source}{hint}")
    if path.is_dir():
        raise CLIError(f"{source} is a directory, not a data file")
    if path.suffix == ".npy":
        try:
            X = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise CLIError(f"could not read {source} as .npy: {exc}") from None
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2 or X.dtype.kind not in "fiub":
            raise CLIError(
                f"{source} must hold a numeric 1-D or 2-D array, got {X.dtype} {X.shape}"
            )
        names = [f"x{j}" for j in range(X.shape[1])]
        return _select(X.astype(np.float64), names, columns, drop_missing, source)
    return _read_csv(path, columns, drop_missing)


def _read_csv(
    path: Path, columns: list[str] | None, drop_missing: bool
) -> tuple[np.ndarray, list[str]]:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not a text CSV file") from None
    rows = [r for r in csv.reader(text.splitlines()) if any(cell.strip() for cell in r)]
    if not rows:
        raise CLIError(f"{path} is empty")
    first = [c.strip() for c in rows[0]]
    has_header = not all(_is_number(c) or c == "" for c in first)
    names = first if has_header else [f"x{j}" for j in range(len(first))]
    body = rows[1:] if has_header else rows
    if not body:
        raise CLIError(f"{path} has a header but no data rows")
    width = len(names)
    for i, r in enumerate(body):
        if len(r) != width:
            line = i + (2 if has_header else 1)
            raise CLIError(f"{path} line {line} has {len(r)} fields, expected {width}")
    table = [[c.strip() for c in r] for r in body]
    selected = _column_indices(names, columns, path)
    text_cols = [
        names[j]
        for j in selected
        if any(not _is_number(r[j]) and r[j] not in ("", "NA", "nan", "NaN") for r in table)
    ]
    if text_cols:
        numeric = [
            names[j]
            for j in range(width)
            if all(_is_number(r[j]) or r[j] in ("", "NA", "nan", "NaN") for r in table)
        ]
        hint = f" --columns {','.join(numeric)}" if numeric else " --columns with numeric ones"
        raise CLIError(
            f"{path} has text in column(s) {', '.join(text_cols)}; select numeric columns "
            f"with{hint}"
        )
    X = np.array([[float(r[j]) if _is_number(r[j]) else np.nan for j in selected] for r in table])
    return _drop_missing(X, [names[j] for j in selected], drop_missing, str(path))


def _column_indices(names: list[str], columns: list[str] | None, source: Any) -> list[int]:
    if not columns:
        return list(range(len(names)))
    out = []
    for c in columns:
        if c in names:
            out.append(names.index(c))
        elif c.isdigit() and int(c) < len(names):
            out.append(int(c))
        else:
            raise CLIError(f"{source} has no column {c!r}; columns are {', '.join(names)}")
    return out


def _select(
    X: np.ndarray, names: list[str], columns: list[str] | None, drop_missing: bool, source: str
) -> tuple[np.ndarray, list[str]]:
    idx = _column_indices(names, columns, source)
    return _drop_missing(X[:, idx], [names[j] for j in idx], drop_missing, source)


def _drop_missing(
    X: np.ndarray, names: list[str], drop_missing: bool, source: str
) -> tuple[np.ndarray, list[str]]:
    missing = ~np.isfinite(X)
    if missing.any():
        rows = missing.any(axis=1)
        if not drop_missing:
            raise CLIError(
                f"{source} has {int(missing.sum())} missing value(s) in {int(rows.sum())} "
                f"row(s); pass --drop-missing to drop those rows"
            )
        X = X[~rows]
    if X.shape[0] == 0:
        raise CLIError(f"{source} has no complete rows")
    return X, names


# ----------------------------------------------------------------------------- commands
def _methods(args: argparse.Namespace) -> dict[str, Any]:
    """The method objects the command asked for, with progress bars unless --quiet."""
    import mixlab as ml

    progress = False if args.quiet else None  # bars on a terminal only, never in logs
    em = ml.EM(n_init=args.n_init, progress=progress)
    return {
        "em": em,
        "svi": ml.SVI(num_steps=args.svi_steps, guide="normal", em=em, progress=progress),
        "nuts": ml.NUTS(
            num_warmup=args.warmup,
            num_samples=args.samples,
            num_chains=args.chains,
            em=em,
            progress=progress,
        ),
    }


def _load(args: argparse.Namespace) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """The data, their column names and the frequency weights (``--weights COLUMN``)."""
    from mixlab import datasets

    weights = getattr(args, "weights", None)
    columns = args.columns
    if weights and columns is not None:
        columns = [*columns, weights]
    elif weights and args.data in datasets.available() and not Path(args.data).exists():
        columns = [*datasets.columns(args.data), weights]
    X, names = read_data(args.data, columns, args.drop_missing)
    w = None
    if weights:
        matches = [j for j, n in enumerate(names) if n == weights]
        if not matches and weights.isdigit() and int(weights) < len(names):
            matches = [int(weights)]
        if not matches:
            raise CLIError(
                f"{args.data} has no weight column {weights!r}; columns are {', '.join(names)}"
            )
        j = matches[-1]
        w = X[:, j]
        X = np.delete(X, j, axis=1)
        names = [n for i, n in enumerate(names) if i != j]
        if X.shape[1] == 0:
            raise CLIError(f"{args.data} has no data columns besides the weights {weights!r}")
    if args.k > X.shape[0]:
        raise CLIError(f"-k {args.k} is larger than the {X.shape[0]} rows of {args.data}")
    return X, names, w


def _named(X: np.ndarray, names: list[str], source: str) -> Any:
    """``X`` as a DataFrame with its column names (and, for an embedded data set, its
    units), so the fit's summary, tables, plots and ArviZ output name the features."""
    import pandas as pd

    from mixlab import datasets

    if len(set(names)) != len(names):
        return X  # repeated column names cannot label features
    frame = pd.DataFrame(X, columns=names)
    if source in datasets.available() and not Path(source).exists():
        frame.attrs["units"] = dict(datasets.load(source, as_frame=True).attrs["units"])
    return frame


def _write_params(
    out: Path, result: Any, X: np.ndarray, names: list[str], weights: np.ndarray | None = None
) -> Path:
    params = result.params.to_dict()
    payload = {
        "method": result.method,
        "columns": names,
        **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in params.items()},
        "log_likelihood": result.log_likelihood,
        "converged": bool(result.converged),
        "n_iter": int(result.n_iter),
        "bic": result.bic(X, sample_weight=weights),
        "aic": result.aic(X, sample_weight=weights),
    }
    if "elbo" in result.diagnostics:
        payload["elbo"] = result.diagnostics["elbo"]
    if "divergences" in result.diagnostics:
        payload["divergences"] = int(result.diagnostics["divergences"])
        payload["max_r_hat"] = float(result.diagnostics["max_r_hat"])
    path = out / "params.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def _write_csv(path: Path, header: list[str], rows: Any) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plots(out: Path, result: Any, X: np.ndarray, prefix: str = "") -> list[Path]:
    from mixlab import plot

    written = [_save_figure(plot.trace(result), out / f"{prefix}trace.png")]
    if X.shape[1] >= 2:
        written.append(_save_figure(plot.scatter_2d(result, X), out / f"{prefix}scatter.png"))
    else:
        written.append(_save_figure(plot.density_1d(result, X), out / f"{prefix}density.png"))
    if result.restarts is not None and len(result.restarts) > 1:
        written.append(_save_figure(plot.restarts(result), out / f"{prefix}restarts.png"))
    return written


def _write_fit(
    out: Path,
    result: Any,
    X: np.ndarray,
    names: list[str],
    prefix: str = "",
    weights: np.ndarray | None = None,
) -> list:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if not prefix:
        written.append(_write_params(out, result, X, names, weights))
    resp = result.predict_proba(X)
    written.append(
        _write_csv(
            out / f"{prefix}labels.csv",
            ["label"] + [f"p{k}" for k in range(resp.shape[1])],
            ([int(lab)] + [f"{v:.10g}" for v in row] for lab, row in zip(resp.argmax(1), resp)),
        )
    )
    column = "elbo" if result.method == "svi" else "log_likelihood"
    written.append(
        _write_csv(
            out / f"{prefix}trace.csv",
            ["step", column],
            ([i, f"{v:.12g}"] for i, v in enumerate(result.trace)),
        )
    )
    written += _plots(out, result, X, prefix)
    if result.method in ("svi", "nuts"):
        path = out / f"{prefix}posterior.nc"
        result.to_arviz(feature_names=names).to_netcdf(str(path))
        written.append(path)
    written.append(result.save(out / f"{prefix}result.npz"))
    return written


def _report(paths: list[Path], quiet: bool) -> None:
    if not quiet:
        for p in paths:
            print(f"wrote {p}")


def cmd_fit(args: argparse.Namespace) -> int:
    import mixlab as ml

    X, names, w = _load(args)
    method = _methods(args)[args.method]
    result = ml.fit(
        _named(X, names, args.data),
        args.k,
        method=method,
        family=args.family,
        covariance=args.covariance,
        sample_weight=w,
        key=args.seed,
    )
    if not args.quiet:
        print(result.summary())
    if args.out:
        _report(_write_fit(Path(args.out), result, X, names, weights=w), args.quiet)
    return 0


def run_compare(args: argparse.Namespace) -> tuple[Any, list[Path]]:
    import mixlab as ml
    from mixlab import plot

    X, names, w = _load(args)
    methods = _methods(args)
    frame = _named(X, names, args.data)
    fits = {
        name: ml.fit(
            frame,
            args.k,
            method=m,
            family=args.family,
            covariance=args.covariance,
            sample_weight=w,
            key=args.seed + i,
        )
        for i, (name, m) in enumerate(methods.items())
    }
    comparison = ml.compare(fits["em"], fits["svi"], fits["nuts"])
    written: list[Path] = []
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written.append(_write_params(out, fits["em"], X, names, w))
        for name, result in fits.items():
            written += _write_fit(out, result, X, names, prefix=f"{name}_", weights=w)
        path = out / "comparison.csv"
        comparison.table.to_csv(path)
        written.append(path)
        written.append(
            _save_figure(plot.forest(fits["em"], fits["svi"], fits["nuts"]), out / "forest.png")
        )
    return comparison, written


def cmd_compare(args: argparse.Namespace) -> int:
    comparison, written = run_compare(args)
    print(comparison)
    _report(written, args.quiet)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.data, args.k, args.covariance, args.columns, args.drop_missing = (
        "faithful",
        2,
        "full",
        None,
        False,
    )
    args.family, args.weights = "gaussian", None
    args.out = args.out or "mixlab-demo"
    if not args.quiet:
        print("Old Faithful (272 eruptions: duration, waiting time), K=2: EM, SVI and NUTS\n")
    comparison, written = run_compare(args)
    print(comparison)
    _report(written, args.quiet)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """EM speed on synthetic data, against scikit-learn when it is installed."""
    import time
    import warnings

    import mixlab as ml

    rng = np.random.default_rng(0)
    n, k, d, iters = args.n, args.k, args.d, args.iterations
    centers = rng.normal(0, 4, (k, d))
    X = centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    start = {
        "weights": np.full(k, 1 / k),
        "means": centers + rng.normal(0, 0.5, (k, d)),
        "covariances": np.tile(np.eye(d), (k, 1, 1)),
    }
    r = ml.fit(X, k, ml.EM(init=start, tol=0.0, max_iter=iters))
    print(
        f"N={n} K={k} D={d}, {iters} iterations, float64: mixlab {r.elapsed:.3f} s "
        f"(+{r.compile_time:.2f} s compile), log-likelihood {r.log_likelihood:.6f}"
    )
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError:
        print("scikit-learn is not installed: no comparison")
        return 0
    gm = GaussianMixture(
        k,
        tol=0.0,
        max_iter=iters,
        weights_init=start["weights"],
        means_init=start["means"],
        precisions_init=np.linalg.inv(start["covariances"]),
    )
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X)
    sk = time.perf_counter() - t
    print(
        f"scikit-learn {sk:.3f} s (its own initialisation pass included): "
        f"{sk / r.elapsed:.1f}x; log-likelihood {gm.score(X) * n:.6f}"
    )
    return 0


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixlab", description="Fit finite mixtures by EM, SVI and NUTS and compare them."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "data",
            help="CSV (with or without header) or .npy file, or an "
            "embedded data set: faithful, galaxies, quine, lsat6",
        )
        p.add_argument("-k", type=int, required=True, help="number of components")
        p.add_argument(
            "--family",
            choices=["gaussian", "poisson", "bernoulli", "student_t"],
            default="gaussian",
            help="component family (default gaussian)",
        )
        p.add_argument(
            "--covariance",
            choices=["full", "diag", "spherical", "tied"],
            default=None,
            help="covariance layout of gaussian and student_t components (default full)",
        )
        p.add_argument(
            "--weights",
            metavar="COLUMN",
            help="a column of frequency weights (sample_weight), left out of the data",
        )
        p.add_argument(
            "--columns", type=_columns, help="comma-separated column names or indices to use"
        )
        p.add_argument("--drop-missing", action="store_true", help="drop rows with missing values")

    def fit_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--n-init", type=int, default=4, help="EM restarts (default 4)")
        p.add_argument("--svi-steps", type=int, default=3000, help="SVI steps (default 3000)")
        p.add_argument("--warmup", type=int, default=1000, help="NUTS warmup (default 1000)")
        p.add_argument(
            "--samples", type=int, default=1000, help="NUTS draws per chain (default 1000)"
        )
        p.add_argument("--chains", type=int, default=4, help="NUTS chains (default 4)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--out", help="directory for the outputs")
        p.add_argument("--quiet", action="store_true", help="no progress bars or summary")

    fit = sub.add_parser("fit", help="fit a mixture by one method and write its outputs")
    data_args(fit)
    fit.add_argument("--method", choices=["em", "svi", "nuts"], default="em")
    fit_args(fit)
    fit.set_defaults(func=cmd_fit)

    compare = sub.add_parser("compare", help="fit by EM, SVI and NUTS and compare them")
    data_args(compare)
    fit_args(compare)
    compare.set_defaults(func=cmd_compare)

    demo = sub.add_parser("demo", help="compare EM, SVI and NUTS on Old Faithful, with plots")
    fit_args(demo)
    demo.set_defaults(func=cmd_demo, n_init=8, warmup=500, samples=500, svi_steps=2000)

    bench = sub.add_parser("bench", help="time EM against scikit-learn on synthetic data")
    bench.add_argument("-n", type=int, default=100_000)
    bench.add_argument("-k", type=int, default=8)
    bench.add_argument("-d", type=int, default=2)
    bench.add_argument("--iterations", type=int, default=50)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("k", "n_init", "svi_steps", "warmup", "samples", "chains", "n", "d", "iterations"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "warmup" else 1):
            print(f"mixlab: error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    from mixlab.errors import FitError, LoadError

    try:
        return args.func(args)
    except (CLIError, FitError, LoadError, ValueError, TypeError) as exc:
        print(f"mixlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
