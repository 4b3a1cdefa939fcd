"""The ``mixlab`` command: argument parsing, reading data, printing. Nothing else.

    mixlab fit DATA -k K [--method em|svi|nuts] [--covariance TYPE] [--n-init N]
                         [--columns a,b] [--drop-missing] [--out DIR] [--quiet]
    mixlab demo [--out DIR]

``DATA`` is a CSV file (with or without a header), a ``.npy`` file, or the
name of an embedded data set (``faithful``, ``galaxies``).  Bad input prints
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
        names = datasets.columns(source)
        X = datasets.load(source)
        return _select(X, names, columns, drop_missing, source)
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
def _method(args: argparse.Namespace) -> Any:
    import mixlab as ml

    if args.method == "em":
        return ml.EM(n_init=args.n_init)
    raise CLIError(f"--method {args.method} is not available yet; use --method em")


def _write_outputs(out: Path, result: Any, X: np.ndarray, names: list[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    params = result.params.to_dict()
    payload = {
        "method": result.method,
        "columns": names,
        "covariance_type": params["covariance_type"],
        "weights": params["weights"].tolist(),
        "means": params["means"].tolist(),
        "covariances": params["covariances"].tolist(),
        "log_likelihood": result.log_likelihood,
        "converged": bool(result.converged),
        "n_iter": int(result.n_iter),
        "bic": result.bic(X),
        "aic": result.aic(X),
    }
    p = out / "params.json"
    p.write_text(json.dumps(payload, indent=2))
    written.append(p)
    resp = result.predict_proba(X)
    p = out / "labels.csv"
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label"] + [f"p{k}" for k in range(resp.shape[1])])
        for label, row in zip(resp.argmax(axis=1), resp):
            w.writerow([int(label)] + [f"{v:.10g}" for v in row])
    written.append(p)
    p = out / "trace.csv"
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["iteration", "objective"])
        for i, v in enumerate(result.trace):
            w.writerow([i, f"{v:.12g}"])
    written.append(p)
    return written


def cmd_fit(args: argparse.Namespace) -> int:
    import mixlab as ml

    X, names = read_data(args.data, args.columns, args.drop_missing)
    if args.k > X.shape[0]:
        raise CLIError(f"-k {args.k} is larger than the {X.shape[0]} rows of {args.data}")
    result = ml.fit(X, args.k, method=_method(args), covariance=args.covariance, key=args.seed)
    if not args.quiet:
        print(result.summary())
    if args.out:
        for p in _write_outputs(Path(args.out), result, X, names):
            if not args.quiet:
                print(f"wrote {p}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.data, args.k, args.method, args.covariance = "faithful", 2, "em", "full"
    args.columns, args.drop_missing, args.n_init, args.seed = None, False, 8, 0
    return cmd_fit(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixlab", description="Fit finite mixtures by EM, SVI and NUTS and compare them."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", help="directory for the outputs")
        p.add_argument("--quiet", action="store_true", help="no progress or summary output")

    fit = sub.add_parser("fit", help="fit a mixture to a data file")
    fit.add_argument("data", help="CSV or .npy file, or an embedded data set name")
    fit.add_argument("-k", type=int, required=True, help="number of components")
    fit.add_argument("--method", choices=["em", "svi", "nuts"], default="em")
    fit.add_argument("--covariance", choices=["full", "diag", "spherical", "tied"], default="full")
    fit.add_argument("--n-init", type=int, default=4, help="EM restarts (default 4)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument(
        "--columns",
        type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
        help="comma-separated column names or indices to use",
    )
    fit.add_argument("--drop-missing", action="store_true", help="drop rows with missing values")
    common(fit)
    fit.set_defaults(func=cmd_fit)

    demo = sub.add_parser("demo", help="fit the embedded Old Faithful data")
    common(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "k", 1) is not None and getattr(args, "k", 1) < 1:
        print("mixlab: error: -k must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"mixlab: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        print(f"mixlab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
