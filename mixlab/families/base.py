"""The component-family protocol and its registry.

A family is the one place where a distribution is described: the names,
shapes and constraints of its parameters, its log-density, the sufficient
statistics EM sums over rows and the M-step that turns them into parameters,
sampling, initialisation, data checks, parameter counts, the prior sites of
its Bayesian version and a distance between components for label alignment.
The EM driver, the NumPyro model, ``compare``, ArviZ export, save/load, plots
and the command line only talk to this protocol, so a new family is one
module (and its tests) and nothing else.

Learnt from pomegranate 1.x (``summarize`` adds sufficient statistics over
batches, ``from_summaries`` turns them into parameters) and from equinox
(static fields, pure methods): a family instance carries only static options
(the covariance layout, fixed degrees of freedom), compares equal to another
with the same options and is hashable, so it is a static argument of
``jax.jit``.

Component parameters (``components``) are a dict ``{name: array}`` whose
leaves have a leading component axis ``K`` (a parameter shared by all
components, such as a tied covariance, has none: its :class:`ParamSpec` says
so).

Two kinds of methods:

* layout methods on NumPy arrays outside ``jit``: :meth:`Family.param_specs`,
  :meth:`Family.check_components`, :meth:`Family.check_data`,
  :meth:`Family.n_parameters`, :meth:`Family.prior_constants`;
* pure JAX methods that run inside ``jit``/``vmap``: :meth:`Family.prepare`,
  :meth:`Family.log_prob`, :meth:`Family.summarize`, :meth:`Family.m_step`,
  :meth:`Family.sample`, ...

The EM iteration, for any family, is::

    prepared = family.prepare(components, formulation)        # once per iteration
    log_joint = family.log_prob(X, prepared, features) + log(weights)
    resp = softmax(log_joint) * row_weight
    stats = sum over row chunks of family.summarize(X, resp, prepared, features)
    centre = family.second_pass(stats, nk, components, fixed)   # None: one pass
    second = None if centre is None else sum of family.summarize_second(X, resp, centre)
    components = family.m_step(stats, nk, components, reg, fixed, second)

``nk`` (the responsibility sums, with a guard of ten epsilons) and the weights
are the driver's; ``stats`` and ``second`` are pytrees of sums over rows, so
chunks, devices and streams add them.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class DataSummary(NamedTuple):
    """What the EM driver learns about the data before compiling (host values).

    Computed in one pass where the data are (on the device for large data or
    data given as JAX arrays), so families decide on formulations and checks
    without a host copy of the data.
    """

    n_samples: int
    n_features: int
    dtype: np.dtype
    mean: np.ndarray  # (D,) weighted column means
    var: np.ndarray  # (D,) weighted column variances
    max_abs: float  # largest |x - shift| over the rows (shift: the mean for location families)


_REGISTRY: dict[str, type[Family]] = {}

#: Dimension names of parameter axes (ArviZ coordinates): ``component`` is K,
#: ``feature`` and ``feature_`` are D.
DIMS = ("component", "feature", "feature_")


class ParamSpec(NamedTuple):
    """One component parameter of a family.

    Attributes
    ----------
    name : str
        Field name used by ``params.<name>``, explicit starts and saved files.
    dims : tuple of str
        Axis names from ``("component", "feature", "feature_")``; the shape is
        ``K`` for ``component`` and ``D`` for the feature axes.  A parameter
        shared by all components has no ``component`` axis.
    constraint : str
        ``"real"``, ``"positive"``, ``"non_negative"``, ``"unit_interval"``,
        ``"positive_definite"`` (symmetric matrices over the last two axes) or
        ``"greater_than_2"``.
    display : str
        Singular noun for tables and plots (``"mean"``, ``"rate"``, ...).
    """

    name: str
    dims: tuple[str, ...]
    constraint: str = "real"
    display: str = ""

    def shape(self, n_components: int, n_features: int) -> tuple[int, ...]:
        sizes = {"component": n_components, "feature": n_features, "feature_": n_features}
        return tuple(sizes[d] for d in self.dims)

    @property
    def per_component(self) -> bool:
        return bool(self.dims) and self.dims[0] == "component"

    @property
    def symmetric(self) -> bool:
        return self.constraint == "positive_definite"


class PriorSite(NamedTuple):
    """One latent site of a family's Bayesian model, declared without NumPyro.

    ``mixlab.bayes`` turns each ``kind`` into a distribution:

    ``"normal"`` (args ``loc``, ``scale``), ``"half_normal"`` (``scale``),
    ``"lkj_cholesky"`` (``eta``; Cholesky factors of correlation matrices of
    size ``dimension``), ``"gamma"`` (``concentration``, ``rate``), ``"beta"``
    (``concentration1``, ``concentration0``), ``"ordered_normal"`` (``loc``,
    ``scale``: a vector constrained to increase) and ``"shifted_gamma"``
    (``concentration``, ``rate``, ``low``: ``low + Gamma``).

    ``shape`` is the batch shape of the site; every arg is a number, or the
    name of a data-derived constant from :meth:`Family.prior_constants`
    (those travel as arguments of the compiled model, so one program serves
    any data set of the same shape).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    args: tuple[tuple[str, Any], ...] = ()
    dimension: int = 0

    def arg(self, name: str) -> Any:
        return dict(self.args)[name]


def weighted_mean_sd(X: np.ndarray, row_weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and (population) standard deviation under frequency weights."""
    if row_weight is None:
        return X.mean(axis=0), X.std(axis=0)
    w = np.asarray(row_weight, np.float64)
    mean = (w @ X) / w.sum()
    return mean, np.sqrt((w @ np.square(X - mean)) / w.sum())


class Standardisation(NamedTuple):
    """``z = (x - loc) / scale`` per feature; the identity for families on raw counts."""

    loc: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)

    @classmethod
    def identity(cls, n_features: int) -> Standardisation:
        return cls(np.zeros(n_features), np.ones(n_features))

    def apply(self, X: np.ndarray) -> np.ndarray:
        return (X - self.loc) / self.scale

    @property
    def is_identity(self) -> bool:
        return bool(np.all(self.loc == 0) and np.all(self.scale == 1))


class NoBayesianModel(TypeError):
    """The family defines no prior sites, so SVI and NUTS cannot fit it."""


class Family(ABC):
    """A component family: the protocol every family implements.

    Subclasses set :attr:`name`, implement the abstract methods (*required*)
    and may override the others; the Bayesian methods are needed for SVI and
    NUTS only.  Instances are immutable; equality and hashing
    use the class and :meth:`options`.
    """

    #: Registry name (``ml.fit(..., family=name)``).
    name: ClassVar[str]
    #: True when shifting the data shifts the components (a location family):
    #: EM then centres the data on their mean for accuracy and shifts back.
    location: ClassVar[bool] = False
    #: The starting method of ``EM(init="auto")`` (:data:`mixlab.em.init.INIT_METHODS`):
    #: ``"trimmed"`` for heavy-tailed families, whose data often hold gross outliers
    #: that k-means++ would seed on.
    default_init: ClassVar[str] = "kmeans++"
    #: EM formulations this family offers; the first is the default.
    formulations: ClassVar[tuple[str, ...]] = ("centred",)
    #: True for counts and binary data (densities are probabilities of integers).
    discrete: ClassVar[bool] = False
    #: What :meth:`collapsed` detects, for diagnostics and messages.
    degeneracy: ClassVar[str] = "degenerate"
    degeneracy_message: ClassVar[str] = "its parameters degenerated"
    #: True when :meth:`summarize_second` returns weighted sums of products of
    #: deviations from ``centre`` (``sum_i r_ik (x_i - c_k)(x_i - c_k)^T`` and the
    #: like): such sums move to another centre exactly from each component's total
    #: weight and weighted mean, so streaming and online EM keep one pass per
    #: iteration.  A family whose second pass is anything else leaves it False.
    second_pass_quadratic: ClassVar[bool] = False

    # ---------------------------------------------------------------- identity
    def options(self) -> dict[str, Any]:
        """Static options that define the family (saved with results)."""
        return {}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.options() == other.options()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.options().items()))))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    @property
    def covariance_type(self) -> str | None:
        """The covariance layout for families that have one, else ``None``."""
        return self.options().get("covariance")

    # ------------------------------------------------------------------ layout
    @abstractmethod
    def param_specs(self) -> tuple[ParamSpec, ...]:
        """The component parameters, in order (*required*)."""

    def param_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.param_specs())

    def spec(self, name: str) -> ParamSpec:
        for s in self.param_specs():
            if s.name == name:
                return s
        raise KeyError(name)

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free parameters of the whole mixture, weights included (for BIC/AIC).

        Counts every element of every parameter, the upper triangle only of a
        symmetric matrix, plus ``K - 1`` weights.
        """
        total = n_components - 1
        for s in self.param_specs():
            shape = s.shape(n_components, n_features)
            if s.symmetric:
                lead = int(np.prod(shape[:-2], dtype=np.int64))
                total += lead * n_features * (n_features + 1) // 2
            else:
                total += int(np.prod(shape, dtype=np.int64))
        return total

    def coerce(self, name: str, value: np.ndarray, n_components: int, n_features: int):
        """Reshape accepted shortcuts (e.g. 1-D data) to the canonical shape, or raise."""
        shape = self.spec(name).shape(n_components, n_features)
        if value.shape != shape and value.size == math.prod(shape) and n_features == 1:
            value = value.reshape(shape)
        if value.shape != shape:
            raise ValueError(
                f"{name} for {self!r} must have shape {shape} "
                f"({', '.join(self.spec(name).dims)}), got {value.shape}"
            )
        return value

    def check_components(self, components: dict[str, np.ndarray]) -> None:
        """Raise ``ValueError`` naming the field and component that break a constraint."""
        for s in self.param_specs():
            value = np.asarray(components[s.name], dtype=np.float64)
            bad = None
            if s.constraint == "positive":
                bad = value <= 0
                need = "positive"
            elif s.constraint == "non_negative":
                bad = value < 0
                need = "non-negative"
            elif s.constraint == "unit_interval":
                bad = (value < 0) | (value > 1)
                need = "between 0 and 1"
            elif s.constraint == "greater_than_2":
                bad = value <= 2
                need = "above 2"
            if bad is not None and bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                where = f"{s.name}[{', '.join(map(str, idx))}]"
                comp = f" (component {idx[0]})" if s.per_component else ""
                raise ValueError(f"{where}{comp} = {value[idx]:.6g} must be {need}")

    def held_fixed(self) -> tuple[str, ...]:
        """Parameters the family's options hold fixed (``StudentT(dofs=5)``: ``dofs``);
        standard errors condition on them."""
        return ()

    def check_data(self, X: np.ndarray, name: str = "X") -> None:  # noqa: B027 (optional hook)
        """Raise ``ValueError`` for data the family cannot model (default: any finite data).

        Runs on host (NumPy) data; a family that restricts its data should also
        define :meth:`invalid_values`, the same test in JAX, so that large data and
        data already on a device are checked where they are (this method then
        only words the error).
        """

    def invalid_values(self, X: Array) -> Array | None:
        """Pure JAX: ``(n, D)`` booleans, true where ``X`` holds a value the family
        cannot model (``None``: any finite value is fine, the default).

        When a family restricts its data (:meth:`check_data`) but returns ``None``
        here, data on a device are copied to the host to be checked.
        """
        return None

    def min_points(self, n_features: int) -> int:
        """Points a component needs to start non-degenerate (its rows at initialisation)."""
        return 1

    def check_fit_data(self, summary: DataSummary, reg: float) -> list[int]:
        """Checks of the data (their :class:`DataSummary`) against the fit's settings;
        returns features to report in ``diagnostics["reg_covar_dominates"]``."""
        return []

    def choose_formulation(self, requested: str, summary: DataSummary, reg: float) -> str:
        """Resolve ``"auto"`` to one of :attr:`formulations` for these data."""
        if requested == "auto":
            return self.formulations[0]
        if requested not in self.formulations:
            raise ValueError(
                f"formulation {requested!r} is not available for {self!r}; use 'auto' or one "
                f"of {', '.join(map(repr, self.formulations))}"
            )
        return requested

    def work_width(self, n_components: int, n_features: int, formulation: str) -> int:
        """Values per row of the widest per-chunk intermediate (sizes row chunks)."""
        return n_components * n_features

    def row_feature_width(self, n_features: int, formulation: str) -> int:
        """Columns of :meth:`row_features` (0 when there are none)."""
        return 0

    # ---------------------------------------------------------------- pure JAX
    def prepare(self, components: dict[str, Array], formulation: str = "centred") -> Any:
        """Derived per-iteration quantities (factorisations, logs) for :meth:`log_prob`.

        Computed once per EM iteration, outside the loop over row chunks.
        Default: the components themselves.
        """
        return components

    def row_features(self, X: Array, formulation: str = "centred") -> Array | None:
        """Per-row quantities that depend on the data only (computed once per fit
        where memory allows, else per chunk); ``None`` when the family needs none."""
        return None

    @abstractmethod
    def log_prob(self, X: Array, prepared: Any, features: Array | None = None) -> Array:
        """Component log-densities ``log p(x_i | theta_k)``, shape ``(n, K)`` (*required*)."""

    def log_prob_and_aux(
        self, X: Array, prepared: Any, features: Array | None = None
    ) -> tuple[Array, Any]:
        """:meth:`log_prob` and any by-product the statistics need (default ``None``).

        The Student-t family returns its latent precisions ``u_ik`` here, so the
        E-step computes each Mahalanobis distance once.
        """
        return self.log_prob(X, prepared, features), None

    @abstractmethod
    def summarize(
        self,
        X: Array,
        resp: Array,
        prepared: Any | None,
        features: Array | None = None,
        aux: Any = None,
    ) -> Any:
        """Sufficient statistics: a pytree of sums over the rows of ``X`` (*required*).

        ``resp`` (n, K) holds responsibilities already multiplied by the row
        weights.  ``prepared`` is that of the current parameters, or ``None``
        at initialisation (no parameters yet); ``aux`` the by-product of
        :meth:`log_prob_and_aux` for these rows.  The driver sums ``nk =
        resp.sum(0)`` itself and passes it to :meth:`m_step`.
        """

    def two_pass(self, formulation: str) -> bool:
        """Does the M-step of this formulation take a second pass over the data?"""
        return False

    def second_pass(
        self, stats: Any, nk: Array, components: dict[str, Array] | None, fixed: tuple[str, ...]
    ) -> Any:
        """The centre of the second pass (only called where :meth:`two_pass` says so)."""
        raise TypeError(f"{self!r} declares no second pass")

    def second_pass_resp(self, resp: Array, aux: Any) -> Array:
        """The row weights the second pass sums with (kept from the first pass)."""
        return resp

    def summarize_second(self, X: Array, resp: Array, centre: Any) -> Any:
        """Second-pass sums about ``centre`` (only when :meth:`second_pass` returns one)."""
        raise TypeError(f"{self!r} declares no second pass")

    @abstractmethod
    def m_step(
        self,
        stats: Any,
        nk: Array,
        components: dict[str, Array] | None,
        reg: Any,
        fixed: tuple[str, ...] = (),
        second: Any = None,
    ) -> dict[str, Array]:
        """Components that maximise the expected complete log-likelihood (*required*).

        ``nk`` (K,) are the (weighted) responsibility sums plus a tiny guard;
        ``components`` the current ones (``None`` at initialisation); ``reg``
        the family's regulariser (``reg_covar`` for Gaussians, a pseudo-count
        for Bernoulli, ...); parameters named in ``fixed`` keep their values
        and the others are estimated given them.
        """

    def component_ok(self, components: dict[str, Array], prepared: Any) -> Array:
        """Per component, shape ``(K,)``: are its parameters usable (finite, valid)?

        Default: :meth:`components_finite`.
        """
        return self.components_finite(components)

    def components_finite(self, components: dict[str, Array]) -> Array:
        """Per component, shape ``(K,)``: every parameter finite (no factorisation needed)."""
        n = _n_components(self, components)
        ok = jnp.ones(n, bool)
        for s in self.param_specs():
            finite = jnp.isfinite(components[s.name])
            if s.per_component:
                ok = ok & jnp.all(finite.reshape(n, -1), axis=1)
            else:
                ok = ok & jnp.all(finite)
        return ok

    def collapsed(
        self, components: dict[str, Array], nk: Array, reg: Any, data_var: Array
    ) -> Array:
        """Per component: has it degenerated beyond losing its points? (default never)."""
        return jnp.zeros(nk.shape, bool)

    def restart(
        self,
        components: dict[str, Array],
        mask: Array,
        points: Array,
        pooled: dict[str, Array],
    ) -> dict[str, Array]:
        """Components where ``mask`` (K,) is true restarted near ``points`` (K, D).

        Used after a collapse and for thin starting components.  Default: every
        per-component parameter of those components from ``pooled`` (the whole
        data set's fit), then :meth:`place` at their points.
        """
        out = {}
        for s in self.param_specs():
            value = components[s.name]
            if s.per_component:
                m = mask.reshape((-1,) + (1,) * (value.ndim - 1))
                value = jnp.where(m, pooled[s.name], value)
            out[s.name] = value
        return self.place(out, mask, points)

    def place(self, components: dict[str, Array], mask: Array, points: Array) -> dict[str, Array]:
        """Move the location of the components where ``mask`` is true to ``points``
        (default: leave them where the pooled fit put them)."""
        return components

    def shift(self, components: dict[str, Array], delta: Array) -> dict[str, Array]:
        """The components for data shifted by ``delta`` (location families only)."""
        return components

    @abstractmethod
    def sample(self, key: Array, components: dict[str, Array], labels: Array) -> Array:
        """One draw per entry of ``labels`` (component indices), shape ``(n, D)`` (*required*)."""

    @abstractmethod
    def moments(self, components: dict[str, Array]) -> tuple[Array, Array]:
        """Mean ``(K, D)`` and covariance ``(K, D, D)`` of each component (for
        plots and summaries; infinite where a moment does not exist)."""

    def describe_component(self, components: dict[str, np.ndarray], k: int) -> str:
        """Extra text about component ``k`` for summaries, beyond its mean and sd."""
        return ""

    def marginal(
        self, components: dict[str, np.ndarray], feature: int
    ) -> tuple[Family, dict[str, np.ndarray]]:
        """The family and components of one feature's marginal (for 1-D plots).

        Default, for families whose features are independent given the
        component: every parameter with a feature axis taken at ``feature``.
        """
        out = {}
        for s in self.param_specs():
            value = np.asarray(components[s.name])
            for axis, dim in enumerate(s.dims):
                if dim in ("feature", "feature_"):
                    value = np.take(value, [feature], axis=axis)
            out[s.name] = value
        return self, out

    def alignment_features(self, components: dict[str, Array], data_scale: Array) -> Array:
        """Per component a feature vector ``(K, F)`` (pure JAX); label alignment matches
        components by squared Euclidean distance between them.

        Default: the means of :meth:`moments` in units of ``data_scale`` and the
        log standard deviations.
        """
        mean, cov = self.moments(components)
        sd = jnp.sqrt(jnp.maximum(jnp.diagonal(cov, axis1=-2, axis2=-1), 1e-300))
        return jnp.concatenate([mean / data_scale, jnp.log(sd)], axis=-1)

    # ------------------------------------------------ Bayesian parameterisation
    def standardisation(
        self, X: np.ndarray, row_weight: np.ndarray | None = None
    ) -> Standardisation:
        """How the Bayesian model rescales the data (default: not at all).

        ``row_weight`` are frequency weights: weighted statistics, so that
        weights and duplicated rows give the same model.
        """
        return Standardisation.identity(X.shape[1])

    def to_data_units(self, components: dict[str, Array], std: Standardisation) -> dict:
        """Components of standardised data back in data units (default: unchanged)."""
        return components

    def from_data_units(self, components: dict[str, Array], std: Standardisation) -> dict:
        """Inverse of :meth:`to_data_units`."""
        return components

    def prior_constants(
        self,
        X_std: np.ndarray,
        std: Standardisation,
        priors: Any,
        row_weight: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Data-derived constants the prior sites refer to by name (NumPy arrays).

        ``X_std`` are the standardised data, ``std`` the standardisation and
        ``row_weight`` the rows' frequency weights (use weighted statistics).
        """
        return {}

    def prior_sites(self, n_components: int, n_features: int, priors: Any) -> tuple[PriorSite, ...]:
        """The latent sites of the components under a prior (*required* for SVI/NUTS)."""
        raise NoBayesianModel(
            f"{self!r} defines no prior sites, so it cannot be fitted by SVI or NUTS; "
            "fit it by EM, or give the family prior_sites / components_from_sites"
        )

    def components_from_sites(
        self, values: dict[str, Array], n_components: int, n_features: int
    ) -> dict[str, Array]:
        """Components from values of the prior sites (*required* for SVI/NUTS)."""
        raise NoBayesianModel(f"{self!r} defines no components_from_sites")

    def sites_from_components(
        self, components: dict[str, Array], n_components: int, n_features: int, priors: Any
    ) -> dict[str, Array]:
        """Inverse of :meth:`components_from_sites` (to start a sampler at EM)."""
        raise NoBayesianModel(f"{self!r} defines no sites_from_components")


def _n_components(family: Family, components: dict[str, Any]) -> int:
    for s in family.param_specs():
        if s.per_component:
            return int(components[s.name].shape[0])
    raise ValueError(f"{family!r} has no per-component parameter")


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family findable by its :attr:`Family.name`."""
    _REGISTRY[cls.name] = cls
    return cls


def families() -> tuple[str, ...]:
    """Names of the registered families."""
    return tuple(_REGISTRY)


def get_family(family: str | Family = "gaussian", **options: Any) -> Family:
    """The family object for a name and options, or ``family`` itself if it is one.

    ``get_family("gaussian", covariance="diag")``, ``get_family("poisson")``.
    For backward compatibility a Gaussian covariance type alone is accepted:
    ``get_family("diag")``.

    Raises
    ------
    ValueError
        An unknown family or option; the message lists the known ones.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(family, Family):
        if options and any(family.options().get(k) != v for k, v in options.items()):
            raise ValueError(
                f"family {family!r} was given together with conflicting options {options}"
            )
        return family
    if not isinstance(family, str):
        raise TypeError(
            f"family must be a name ({', '.join(map(repr, _REGISTRY))}) or a family object "
            f"such as ml.families.Gaussian(covariance='full'), got {type(family).__name__}"
        )
    gaussian = _REGISTRY.get("gaussian")
    if family not in _REGISTRY and gaussian is not None and family in gaussian.COVARIANCE_TYPES:
        options.setdefault("covariance", family)  # get_family("diag")
        family = "gaussian"
    if family not in _REGISTRY:
        raise ValueError(
            f"unknown family {family!r}; use one of {', '.join(map(repr, _REGISTRY))} "
            "or pass a family object"
        )
    cls = _REGISTRY[family]
    accepted = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")
    ]
    extra = sorted(set(options) - set(accepted))
    if extra:
        raise ValueError(
            f"the {family} family takes no option(s) {', '.join(map(repr, extra))}"
            + (f"; its options are {', '.join(map(repr, accepted))}" if accepted else "")
        )
    return cls(**options)
