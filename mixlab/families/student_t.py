"""Multivariate Student-t components: the robust alternative to Gaussian clustering.

Components: ``means (K, D)``, ``covariances`` (the *scale* matrices, laid out
as for Gaussians: ``full``, ``diag``, ``spherical`` or ``tied``; the
covariance of component ``k`` is ``nu_k / (nu_k - 2)`` times its scale matrix
where ``nu_k > 2``) and ``dofs (K,)``, the degrees of freedom ``nu_k``.

``log p(x) = lgamma((nu + D) / 2) - lgamma(nu / 2) - D/2 log(nu pi)
+ log|P| - (nu + D) / 2 log(1 + delta / nu)`` with ``delta`` the squared
Mahalanobis distance under the scale matrix and ``P`` the Cholesky factor of
its inverse.

EM by ECM (Peel and McLachlan 2000, "Robust mixture modelling using the t
distribution"): the E-step gives the responsibilities ``r_ik`` and the
expected latent precisions ``u_ik = (nu_k + D) / (nu_k + delta_ik)``; the
first conditional M-step gives ``mu_k = sum r u x / sum r u`` and
``Sigma_k = sum r u (x - mu_k)(x - mu_k)^T / sum r`` (the scatter about the
new means in an exact second pass); the second solves for each ``nu_k``

``log(nu/2) - psi(nu/2) + 1 + mean_r(log u - u) + psi((nu_old + D)/2)
- log((nu_old + D)/2) = 0``

by bisection in ``log nu`` (the left side decreases in ``nu``), clipped to
``[MIN_DOF, MAX_DOF]``; the expected complete log-likelihood is concave in
``nu``, so the clipped root is still its constrained maximum and every
conditional step increases the likelihood.  ``StudentT(dofs=5)`` fixes the
degrees of freedom of every component instead.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln

from mixlab._validation import check_float
from mixlab.families.base import Family, ParamSpec, PriorSite, register
from mixlab.families.covariance import Layout, get_layout
from mixlab.families.location_scale import LocationScale

Array = jax.Array

#: Degrees of freedom are kept in this range; ``MAX_DOF`` is as good as Gaussian.
MIN_DOF = 0.05
MAX_DOF = 200.0
#: Bisection steps in ``log nu`` (the bracket shrinks by 2^-60).
DOF_BISECTION_STEPS = 60


class StudentTPrepared(NamedTuple):
    means: Array
    prec_chol: Array
    dofs: Array


class StudentTStats(NamedTuple):
    sum_u: Array  # (K,) sum of r u
    sum_ux: Array  # (K, D) sum of r u x
    sum_log_u_minus_u: Array  # (K,) sum of r (log u - u)


def solve_dofs(constant: Array) -> Array:
    """``nu`` with ``log(nu/2) - psi(nu/2) = -constant``, clipped to the dof range.

    ``log y - psi(y)`` decreases from infinity to 0, so there is a root only
    where ``constant < 0``; otherwise ``nu`` is :data:`MAX_DOF`.
    """
    target = -constant

    def g(log_nu: Array) -> Array:
        half = 0.5 * jnp.exp(log_nu)
        return jnp.log(half) - digamma(half) - target

    lo = jnp.full_like(constant, math.log(MIN_DOF))
    hi = jnp.full_like(constant, math.log(MAX_DOF))

    def step(_: int, bracket: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = g(mid) > 0  # g decreases: the root lies above mid
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, DOF_BISECTION_STEPS, step, (lo, hi))
    return jnp.exp(0.5 * (lo + hi))


@register
class StudentT(LocationScale, Family):
    """Multivariate Student-t components with a scale-matrix layout.

    Parameters
    ----------
    covariance : {"full", "diag", "spherical", "tied"}, default "full"
        Layout of the scale matrices (as for Gaussians).
    dofs : float, optional
        Fix every component's degrees of freedom at this value; by default
        they are estimated (starting from :attr:`INITIAL_DOF`).
    """

    default_init = "trimmed"  # outliers must not seed components (EM(init="auto"))

    second_pass_quadratic = True  # covariance sums about a centre (quadratic in it)

    name = "student_t"
    degeneracy_message = "its scale matrix became singular (it sits on too few distinct points)"
    INITIAL_DOF: ClassVar[float] = 10.0

    def __init__(self, covariance: str = "full", dofs: float | None = None) -> None:
        self.layout: Layout = get_layout(covariance)
        self._dofs = None if dofs is None else check_float(dofs, "dofs", 0.0, strict=True)

    @property
    def fixed_dofs(self) -> float | None:
        return self._dofs

    def held_fixed(self) -> tuple[str, ...]:
        return () if self._dofs is None else ("dofs",)

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"covariance": self.layout.name}
        if self._dofs is not None:
            out["dofs"] = self._dofs
        return out

    # ------------------------------------------------------------------ layout
    def param_specs(self) -> tuple[ParamSpec, ...]:
        return (
            ParamSpec("means", ("component", "feature"), "real", "location"),
            self.layout.spec("covariances", "scale"),
            ParamSpec("dofs", ("component",), "positive", "degrees of freedom"),
        )

    def check_components(self, components):
        super().check_components(components)
        self.layout.check(np.asarray(components["covariances"]))

    def two_pass(self, formulation: str) -> bool:
        return True

    def describe_component(self, components, k):
        return f"dof {float(np.asarray(components['dofs'])[k]):.4g}"

    # ---------------------------------------------------------------- pure JAX
    def prepare(self, components, formulation="centred"):
        prec_chol = self.layout.precision_cholesky(components["covariances"])
        return StudentTPrepared(components["means"], prec_chol, components["dofs"])

    def _log_prob_delta(self, X: Array, prepared: StudentTPrepared) -> tuple[Array, Array]:
        n_features = prepared.means.shape[1]
        nu = prepared.dofs
        delta = self.layout.sq_distance(X, prepared.means, prepared.prec_chol)
        const = (
            gammaln(0.5 * (nu + n_features))
            - gammaln(0.5 * nu)
            - 0.5 * n_features * jnp.log(nu * math.pi)
            + self.layout.log_det(prepared.prec_chol, n_features)
        )
        log_prob = const - 0.5 * (nu + n_features) * jnp.log1p(delta / nu)
        return log_prob, delta

    def log_prob(self, X, prepared, features=None):
        return self._log_prob_delta(X, prepared)[0]

    def log_prob_and_aux(self, X, prepared, features=None):
        log_prob, delta = self._log_prob_delta(X, prepared)
        n_features = prepared.means.shape[1]
        u = (prepared.dofs + n_features) / (prepared.dofs + delta)
        return log_prob, u

    def summarize(self, X, resp, prepared, features=None, aux=None):
        if aux is None:  # no current parameters (a start): u = 1, a Gaussian M-step
            ru = resp
            log_u_minus_u = -resp
        else:
            ru = resp * aux
            log_u_minus_u = resp * (jnp.log(aux) - aux)
        return StudentTStats(jnp.sum(ru, axis=0), ru.T @ X, jnp.sum(log_u_minus_u, axis=0))

    def second_pass_resp(self, resp, aux):
        return resp if aux is None else resp * aux

    def second_pass(self, stats, nk, components, fixed):
        if "means" in fixed:
            return components["means"]
        return stats.sum_ux / (stats.sum_u + 10 * jnp.finfo(nk.dtype).eps)[:, None]

    def summarize_second(self, X, resp, centre):
        return self.layout.covariance_stats(X, resp, centre)

    def m_step(self, stats, nk, components, reg, fixed=(), second=None):
        n_features = stats.sum_ux.shape[1]
        if "means" in fixed:
            means = components["means"]
        else:
            means = stats.sum_ux / (stats.sum_u + 10 * jnp.finfo(nk.dtype).eps)[:, None]
        covariances = self.layout.covariances_from_stats(second, nk, reg)
        if components is None:  # the start: no E-step yet
            value = self.INITIAL_DOF if self._dofs is None else self._dofs
            dofs = jnp.full(nk.shape, value, nk.dtype)
        elif self._dofs is not None or "dofs" in fixed:
            dofs = components["dofs"]
        else:
            nu = components["dofs"]
            half = 0.5 * (nu + n_features)
            constant = 1.0 + stats.sum_log_u_minus_u / nk + digamma(half) - jnp.log(half)
            dofs = solve_dofs(constant)
        return {"means": means, "covariances": covariances, "dofs": dofs}

    def component_ok(self, components, prepared):
        n = components["means"].shape[0]
        return (
            self.layout.component_ok(prepared.prec_chol, n)
            & jnp.all(jnp.isfinite(components["means"]), axis=1)
            & jnp.isfinite(components["dofs"])
            & (components["dofs"] > 0)
        )

    def sample(self, key, components, labels):
        means = components["means"]
        key_normal, key_gamma = jax.random.split(key)
        noise = jax.random.normal(key_normal, (labels.shape[0], means.shape[1]), means.dtype)
        nu = components["dofs"][labels]
        precision = jax.random.gamma(key_gamma, 0.5 * nu, dtype=means.dtype) / (0.5 * nu)
        noise = noise / jnp.sqrt(precision)[:, None]
        return self.layout.draw(noise, labels, means, components["covariances"])

    def moments(self, components):
        means = components["means"]
        nu = components["dofs"]
        scale = self.layout.to_full(components["covariances"], *means.shape)
        factor = jnp.where(nu > 2, nu / jnp.where(nu > 2, nu - 2, 1.0), jnp.inf)
        return means, scale * factor[:, None, None]

    def alignment_features(self, components, data_scale):
        means = components["means"]
        scale = self.layout.to_full(components["covariances"], *means.shape)
        sd = jnp.sqrt(jnp.maximum(jnp.diagonal(scale, axis1=-2, axis2=-1), 1e-300))
        return jnp.concatenate([means / data_scale, jnp.log(sd)], axis=-1)

    def marginal(self, components, feature):
        means = np.asarray(components["means"])
        with jax.enable_x64(True):
            scale = np.asarray(
                self.layout.to_full(jnp.asarray(components["covariances"]), *means.shape)
            )
        return StudentT("diag", self._dofs), {
            "means": means[:, [feature]],
            "covariances": scale[:, feature, feature][:, None],
            "dofs": np.asarray(components["dofs"]),
        }

    # ------------------------------------------------ Bayesian parameterisation
    def prior_sites(self, n_components, n_features, priors):
        sites = self.location_scale_sites(n_components, n_features, priors)
        if self._dofs is None:
            sites += (
                PriorSite(
                    "dofs",
                    "gamma",
                    (n_components,),
                    (("concentration", priors.dof_concentration), ("rate", priors.dof_rate)),
                ),
            )
        return sites

    def components_from_sites(self, values, n_components, n_features):
        out = self.location_scale_from_sites(values, n_components)
        if self._dofs is None:
            out["dofs"] = values["dofs"]
        else:
            out["dofs"] = jnp.full((n_components,), self._dofs, out["means"].dtype)
        return out

    def sites_from_components(self, components, n_components, n_features, priors):
        out = self.location_scale_to_sites(components, priors)
        if self._dofs is None:
            out["dofs"] = jnp.clip(components["dofs"], MIN_DOF, MAX_DOF)
        return out
