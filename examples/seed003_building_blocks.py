"""Seed 003 (an object-oriented GMM tutorial), redone with mixlab's public building blocks.

The tutorial writes a ``Gaussian`` class (``log_pdf``, maximum-likelihood
``fit``, ``sample``, validated ``set_mean``/``set_cov``) and a ``GMM`` class
(``log_pdf``, ``e_step``, ``m_step`` and a ``fit`` that stops on a relative
change of the log-likelihood below ``eps = 1e-8`` and raises if the
likelihood ever decreases), then fits two components to 3-D data: 100
standard normal points around 0 and 100 around (3, 3, 3)
(``ml.datasets.three_d``).  Every piece has a public counterpart in mixlab,
checked here against the tutorial's formulas:

* a single Gaussian's maximum-likelihood fit is
  ``ml.fit(X, 1, ml.EM(reg_covar=0))``: the sample mean and the 1/n
  covariance (checked to 1e-10);
* ``log_pdf`` is ``ml.log_prob_components`` (checked against
  ``scipy.stats.multivariate_normal`` to 1e-10);
* ``set_mean``/``set_cov`` validation is ``ml.MixtureParams``, which raises a
  ValueError naming the field;
* ``sample`` is ``MixtureParams.sample(key, n)`` (an explicit key, no global
  random state);
* ``e_step``/``m_step``/``fit`` are ``ml.e_step``, ``ml.m_step`` and a
  ten-line loop with the tutorial's stopping rule and its monotonicity check,
  which agrees with ``ml.fit`` after the same number of iterations to
  rounding.  Stopped by a rule instead, the two agree on the log-likelihood
  to about the tolerance but on the parameters only to about its square
  root: the likelihood's change is second order in the parameters' change.

Where the tutorial goes wrong (1, 2), and a caveat (3):

1. ``GMM.log_pdf`` and ``GMM.e_step`` sum ``weight * exp(log_pdf)``: a point
   far from every component underflows to ``log(0) = -inf`` and the
   responsibilities become ``0 / 0 = NaN``.  The same data in other units
   (times 100) already break its first E-step; mixlab works with
   ``logsumexp`` throughout.
2. ``set_cov`` tests ``np.linalg.eigvalsh(cov)[0] <= 0``: ``eigvalsh`` reads
   only one triangle, so a non-symmetric matrix passes; a singular matrix
   such as ``A @ A.T`` with ``A`` of shape (3, 2) passes whenever rounding
   leaves its smallest computed eigenvalue positive (about half the time);
   and its message says "positive semidefinite" where it means definite.
   mixlab checks symmetry first and says which test failed.
3. The monotonicity check is right for exact EM, but only for exact EM:
   mixlab's default ``reg_covar=1e-6`` (scikit-learn's) may lower the
   likelihood by a second-order amount, so the loop here uses
   ``reg_covar=0``.

Run: ``python examples/seed003_building_blocks.py [--n-per-component 100] [--seed 0]
[--tol 1e-8]``
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import multivariate_normal

import mixlab as ml

K = 2


def study_mixture_log_pdf(X: np.ndarray, params: ml.MixtureParams) -> np.ndarray:
    """The tutorial's ``GMM.log_pdf``: ``log(sum_k w_k exp(log N_k))``, no logsumexp."""
    log_n = np.asarray(ml.log_prob_components(X, params))
    with np.errstate(divide="ignore", under="ignore"):
        return np.log(np.exp(log_n) @ np.asarray(params.weights))


def study_e_step(X: np.ndarray, params: ml.MixtureParams) -> np.ndarray:
    """The tutorial's ``GMM.e_step``: ``w_k exp(log N_k)`` normalised by its row sum."""
    log_n = np.asarray(ml.log_prob_components(X, params))
    with np.errstate(invalid="ignore", under="ignore"):
        post = np.asarray(params.weights) * np.exp(log_n)
        return post / post.sum(axis=1, keepdims=True)


def study_set_cov_accepts(cov: np.ndarray) -> bool:
    """The tutorial's ``set_cov`` test."""
    return not np.linalg.eigvalsh(cov)[0] <= 0


def em_by_hand(
    X: np.ndarray, start: ml.MixtureParams, tol: float, max_iter: int = 10_000
) -> tuple[ml.MixtureParams, np.ndarray]:
    """The tutorial's ``GMM.fit`` with mixlab's pieces: E, M, log-likelihood, check, stop."""
    params, old_ll, trace = start, -np.inf, []
    for _ in range(max_iter):
        resp = np.exp(ml.e_step(X, params).log_resp)
        params = ml.m_step(X, resp, "full", reg_covar=0.0)  # exact EM: monotone
        new_ll = float(ml.log_likelihood(X, params))
        trace.append(new_ll)
        # The tutorial raises on any decrease; allow rounding in the sum over points.
        if new_ll < old_ll - 1e-12 * abs(new_ll):
            raise RuntimeError(f"likelihood decreased: {old_ll!r} -> {new_ll!r}")
        if abs(old_ll - new_ll) / abs(new_ll) < tol:
            break
        old_ll = new_ll
    return params, np.array(trace)


def _check(label: str, make) -> str:
    try:
        make()
    except ValueError as err:
        print(f"   {label}: ValueError: {err}")
        return str(err)
    print(f"   {label}: accepted")
    return ""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-component", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-8, help="relative change to stop at")
    parser.add_argument("--n-draws", type=int, default=20_000, help="points to sample")
    args = parser.parse_args(argv)

    data = ml.datasets.three_d(args.seed, n_per_component=args.n_per_component)
    X = data.X
    n, d = X.shape
    print(f"Data: {n} points in {d}-D, half around 0 and half around (3, 3, 3).")

    # -- 1. One Gaussian by maximum likelihood.
    single = ml.fit(X, 1, ml.EM(reg_covar=0.0), key=args.seed)
    mean, cov = X.mean(axis=0), np.cov(X, rowvar=False, bias=True)
    ml_mean_error = float(np.max(np.abs(single.params.means[0] - mean)))
    ml_cov_error = float(np.max(np.abs(single.params.full_covariances()[0] - cov)))
    closed_form = -0.5 * n * (d * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1] + d)
    print("\n1. A single Gaussian, ml.fit(X, 1, ml.EM(reg_covar=0)):")
    print(
        f"   mean {np.round(single.params.means[0], 5)}; max |mean - X.mean(0)| {ml_mean_error:.1e}"
    )
    print(f"   max |covariance - 1/n covariance| {ml_cov_error:.1e}")
    print(
        f"   log-likelihood {single.log_likelihood:.10f}, closed form "
        f"-n/2 (d log 2 pi + log det S + d) = {closed_form:.10f}"
    )

    # -- The tutorial's start: random means, identity covariances, equal weights.
    rng = np.random.default_rng(args.seed)
    start = ml.MixtureParams(
        np.full(K, 1 / K), rng.standard_normal((K, d)), np.stack([np.eye(d)] * K)
    )

    # -- 2. EM by hand with the tutorial's stopping rule and monotonicity check.
    hand, trace = em_by_hand(X, start, args.tol)
    monotone = bool(np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:])))
    print(f"\n2. EM by hand (ml.e_step / ml.m_step, reg_covar=0), relative tol {args.tol:g}:")
    print(
        f"   {len(trace)} iterations, log-likelihood {trace[0]:.4f} -> {trace[-1]:.10f}, "
        f"never decreased: {monotone}"
    )
    for k in range(K):
        print(f"   component {k}: weight {hand.weights[k]:.4f}  mean {np.round(hand.means[k], 5)}")

    # One compiled ml.fit: the tutorial's rule on mixlab's per-sample scale, every iteration kept.
    rule = args.tol * abs(trace[-1]) / n
    method = ml.EM(init=start, tol=rule, max_iter=10_000, reg_covar=0.0, record_params=True)
    own = ml.fit(X, K, method)
    pt = own.params_trace
    t = min(len(trace), own.n_iter)
    at_hand = pt[t]

    def diff(p: ml.MixtureParams) -> float:
        return float(
            max(
                np.max(np.abs(p.weights - hand.weights)),
                np.max(np.abs(p.means - hand.means)),
                np.max(np.abs(p.covariances - hand.covariances)),
            )
        )

    same_diff, own_diff = diff(at_hand), diff(own.params)
    own_ll_rel = abs(own.log_likelihood - trace[-1]) / abs(trace[-1])
    print(
        f"   ml.fit from the same start, after the same {t} iterations: max parameter "
        f"difference {same_diff:.1e}"
    )
    print(
        f"   ml.fit's own stop with the rule translated (tol = {args.tol:g} |loglik| / n = "
        f"{rule:.2e} per sample): {own.n_iter} iterations, log-likelihood relative difference "
        f"{own_ll_rel:.1e}, max parameter difference {own_diff:.1e}"
    )
    print(
        "   (a rule on the likelihood stops where its change is small; the parameters, whose "
        "change is of the order of its square root, still move that much)"
    )

    # -- 3. Log-densities against scipy.
    logp = np.asarray(ml.log_prob_components(X, hand))
    ref = np.stack(
        [multivariate_normal(hand.means[k], hand.covariances[k]).logpdf(X) for k in range(K)], 1
    )
    logpdf_error = float(np.max(np.abs(logp - ref)))
    print(
        f"\n3. ml.log_prob_components against scipy.stats.multivariate_normal: "
        f"max |difference| {logpdf_error:.1e}"
    )

    # The tutorial's exp-then-log on far points and on rescaled data.
    far = hand.means + 40.0
    print(
        f"   a point 40 units out: the tutorial's log_pdf {study_mixture_log_pdf(far, hand)[0]}, "
        f"mixlab {float(ml.e_step(far, hand).log_prob_norm[0]):.2f}"
    )
    scaled = 100.0 * X
    nan_rows = int(np.sum(np.isnan(study_e_step(scaled, start)).any(axis=1)))
    finite = bool(np.all(np.isfinite(ml.e_step(scaled, start).log_resp)))
    print(
        f"   the data times 100, first E-step from the start: the tutorial's responsibilities "
        f"are NaN for {nan_rows} of {n} points; mixlab's are finite: {finite}"
    )

    # -- 4. Validation.
    print("\n4. Validation (MixtureParams raises a ValueError naming the field):")
    mean0, eye = np.zeros((1, d)), np.eye(d)
    indefinite = eye.copy()
    indefinite[0, 1] = indefinite[1, 0] = 2.0  # eigenvalues -1, 1, 3
    singular = np.diag([1.0, 1.0, 0.0])
    asymmetric = eye.copy()
    asymmetric[0, 1] = 5.0  # the lower triangle is the identity
    errors = {
        "indefinite": _check(
            "covariance with eigenvalue -1", lambda: ml.MixtureParams([1.0], mean0, [indefinite])
        ),
        "singular": _check(
            "singular covariance", lambda: ml.MixtureParams([1.0], mean0, [singular])
        ),
        "asymmetric": _check(
            "non-symmetric covariance", lambda: ml.MixtureParams([1.0], mean0, [asymmetric])
        ),
        "weights": _check(
            "weights (0.5, 0.6)", lambda: ml.MixtureParams([0.5, 0.6], np.zeros((2, d)), [eye, eye])
        ),
        "shape": _check(
            "data with 2 columns for a 3-D mixture",
            lambda: ml.log_prob_components(X[:, :2], hand),
        ),
    }
    low_rank = [a @ a.T for a in rng.standard_normal((6, d, d - 1))]
    study_singular = sum(study_set_cov_accepts(c) for c in low_rank)
    mixlab_singular = 0
    for c in low_rank:
        try:
            ml.MixtureParams([1.0], mean0, [(c + c.T) / 2])
            mixlab_singular += 1
        except ValueError:
            pass
    print(
        f"   six singular matrices A A^T (rank {d - 1}): the tutorial's test accepts "
        f"{study_singular}, MixtureParams accepts {mixlab_singular} (smallest computed "
        f"eigenvalues {', '.join(f'{np.linalg.eigvalsh(c)[0]:.0e}' for c in low_rank)})"
    )
    print(
        f"   the tutorial's set_cov test accepts the non-symmetric matrix: "
        f"{study_set_cov_accepts(asymmetric)}; diag(1, 1, 0): {study_set_cov_accepts(singular)}"
        " (its message says 'positive semidefinite')"
    )

    # -- 5. Sampling.
    draws, labels = hand.sample(args.seed, args.n_draws)
    share = np.bincount(labels, minlength=K) / args.n_draws
    print(f"\n5. {args.n_draws} draws from the fitted mixture, MixtureParams.sample(key, n):")
    sample_means = np.stack([draws[labels == k].mean(axis=0) for k in range(K)])
    sample_covs = np.stack([np.cov(draws[labels == k], rowvar=False) for k in range(K)])
    for k in range(K):
        print(
            f"   component {k}: share {share[k]:.4f} (weight {hand.weights[k]:.4f}), "
            f"sample mean {np.round(sample_means[k], 3)} (mean {np.round(hand.means[k], 3)})"
        )
    cov_error = float(np.max(np.abs(sample_covs - hand.covariances)))
    print(f"   max |sample covariance - covariance| {cov_error:.3f}")

    return {
        "ml_mean_error": ml_mean_error,
        "ml_cov_error": ml_cov_error,
        "single_log_likelihood": single.log_likelihood,
        "closed_form_log_likelihood": float(closed_form),
        "hand": hand,
        "trace": trace,
        "monotone": monotone,
        "same_start_difference": same_diff,
        "same_iterations": t,
        "translated_rule_difference": own_diff,
        "translated_rule_loglik_rel": float(own_ll_rel),
        "logpdf_error": logpdf_error,
        "nan_rows_study": nan_rows,
        "mixlab_finite": finite,
        "errors": errors,
        "study_accepts_asymmetric": study_set_cov_accepts(asymmetric),
        "study_accepts_singular": int(study_singular),
        "mixlab_accepts_singular": mixlab_singular,
        "sample_share": share,
        "sample_means": sample_means,
        "n_draws": args.n_draws,
    }


if __name__ == "__main__":
    main()
