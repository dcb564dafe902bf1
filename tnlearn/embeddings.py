r"""Local feature maps: pixels to product states.

A feature map sends every scalar feature :math:`x_j` to a small vector
:math:`\phi(x_j) \in \mathbb{R}^d`; the sample is the product state
:math:`\Phi(x) = \phi(x_1) \otimes \cdots \otimes \phi(x_N)`.  All maps here are
pure functions of an ``(n_samples, n_sites)`` array returning an
``(n_samples, n_sites, d)`` array.

Maps
----
``"trig"`` (Stoudenmire & Schwab 2016)
    :math:`\phi(x) = [\cos(\pi x / 2), \sin(\pi x / 2)]`, domain ``[0, 1]``,
    every local vector has unit norm (so environments never grow).
``"linear"``
    :math:`\phi(x) = [1, x]`, the affine map (Novikov et al. 2016, "exponential machines").
``"poly2"``, ``"poly3"``
    :math:`\phi(x) = [1, x, \ldots, x^p]`.

A user map is any callable ``f(X) -> Phi`` with that shape contract; wrap it in
:class:`FeatureMap` to declare its domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def trig_map(X):
    r"""Stoudenmire–Schwab map :math:`[\cos(\pi x/2), \sin(\pi x/2)]`.

    Parameters
    ----------
    X : array, shape (n_samples, n_sites), values in [0, 1]

    Returns
    -------
    Phi : array, shape (n_samples, n_sites, 2)
    """
    X = np.asarray(X)
    angle = (np.pi / 2) * X
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def poly_map(X, degree: int = 1):
    r"""Polynomial map :math:`[1, x, x^2, \ldots, x^{degree}]`.

    Parameters
    ----------
    X : array, shape (n_samples, n_sites)
    degree : int, >= 1

    Returns
    -------
    Phi : array, shape (n_samples, n_sites, degree + 1)
    """
    if degree < 1:
        raise ValueError(f"degree={degree} must be >= 1")
    X = np.asarray(X)
    return np.stack([X**k for k in range(degree + 1)], axis=-1)


@dataclass(frozen=True)
class FeatureMap:
    """A named local feature map.

    Attributes
    ----------
    name : str
        Identifier stored with saved models.
    func : callable
        ``func(X (n, N)) -> Phi (n, N, d)``.
    dim : int
        Local dimension ``d``.
    domain : tuple of float or None
        Accepted range of input values, checked before embedding; ``None`` for
        no check.
    """

    name: str
    func: Callable
    dim: int
    domain: tuple[float, float] | None = None

    def __call__(self, X):
        return self.func(X)


FEATURE_MAPS = {
    "trig": FeatureMap("trig", trig_map, 2, (0.0, 1.0)),
    "linear": FeatureMap("linear", lambda X: poly_map(X, 1), 2, None),
    "poly2": FeatureMap("poly2", lambda X: poly_map(X, 2), 3, None),
    "poly3": FeatureMap("poly3", lambda X: poly_map(X, 3), 4, None),
}


def get_feature_map(spec) -> FeatureMap:
    """Resolve a feature-map specification.

    Parameters
    ----------
    spec : str, FeatureMap or callable
        A name from :data:`FEATURE_MAPS`, a :class:`FeatureMap`, or a callable
        ``f(X (n, N)) -> (n, N, d)`` (its ``d`` is found by calling it on one zero row).

    Returns
    -------
    FeatureMap
    """
    if isinstance(spec, FeatureMap):
        return spec
    if isinstance(spec, str):
        try:
            return FEATURE_MAPS[spec]
        except KeyError:
            raise ValueError(
                f"feature_map={spec!r} is not known; choose one of {sorted(FEATURE_MAPS)} "
                "or pass a callable X (n, N) -> Phi (n, N, d)"
            ) from None
    if callable(spec):
        probe = np.asarray(spec(np.zeros((1, 2))))
        if probe.ndim != 3 or probe.shape[:2] != (1, 2):
            raise ValueError(
                "a feature_map callable must map X of shape (n, N) to Phi of shape (n, N, d); "
                f"on an input of shape (1, 2) it returned shape {probe.shape}"
            )
        name = getattr(spec, "__name__", "custom")
        return FeatureMap(f"callable:{name}", spec, int(probe.shape[2]), None)
    raise TypeError(f"feature_map must be a name, a FeatureMap or a callable, not {type(spec).__name__}")


class DataDomainWarning(UserWarning):
    """Values outside a feature map's domain were clipped into it."""


def embed(X, feature_map="trig", dtype=np.float32, out_of_domain="raise"):
    """Embed samples as product states, checking the map's domain.

    Parameters
    ----------
    X : array, shape (n_samples, n_sites)
    feature_map : str, FeatureMap or callable
    dtype : numpy dtype
        Floating dtype of the result.
    out_of_domain : {"raise", "clip"}
        What to do with values outside the map's domain: ``"raise"`` (used
        when fitting: badly scaled training data is a mistake) or ``"clip"``
        into the domain with a :class:`DataDomainWarning` (used when
        predicting: test data a scaler maps slightly outside ``[0, 1]`` is normal).

    Returns
    -------
    Phi : array, shape (n_samples, n_sites, d)

    Raises
    ------
    ValueError
        When ``X`` is complex, has NaN/inf values, or values outside the map's
        domain and ``out_of_domain="raise"``.
    """
    fmap = get_feature_map(feature_map)
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must have shape (n_samples, n_sites), got shape {X.shape}")
    check_real_finite(X)
    if fmap.domain is not None and X.size:
        lo, hi = fmap.domain
        xmin, xmax = float(X.min()), float(X.max())
        tol = 1e-6
        if xmin < lo - tol or xmax > hi + tol:
            negative = "Negative values in data: " if xmin < 0 <= lo else ""  # scikit-learn's words
            msg = (
                f"{negative}feature_map={fmap.name!r} expects values in [{lo}, {hi}] but X has values in "
                f"[{xmin:g}, {xmax:g}]; rescale the data first (e.g. pixels / 255, or "
                "sklearn.preprocessing.MinMaxScaler)"
            )
            if out_of_domain == "raise":
                raise ValueError(msg)
            import warnings

            warnings.warn(msg + "; values were clipped into the domain", DataDomainWarning, stacklevel=3)
        X = np.clip(X, lo, hi)
    Phi = np.asarray(fmap(X), dtype=dtype)
    if Phi.shape[:2] != X.shape:
        raise ValueError(f"feature map {fmap.name!r} returned shape {Phi.shape} for X of shape {X.shape}")
    return Phi


def check_real_finite(X, what="X"):
    """Refuse complex arrays and NaN / inf values, naming the columns and the fix.

    Raises
    ------
    ValueError
        ``"Complex data not supported"`` (scikit-learn's words) for a complex
        array; the count and columns of non-finite values otherwise.
    """
    if np.iscomplexobj(X):
        raise ValueError(f"Complex data not supported: {what} has complex dtype {X.dtype}; the models take real "
                         "values: pass X.real or np.abs(X)")
    finite = np.isfinite(X)
    if not finite.all():
        # columns, not rows: the estimators may embed a shuffled copy of X
        cols = np.flatnonzero(~finite.all(axis=0))
        shown = ", ".join(str(j) for j in cols[:5]) + (", ..." if len(cols) > 5 else "")
        raise ValueError(
            f"{what} contains {int((~finite).sum())} NaN or infinite value(s), in column(s) {shown}; "
            "remove or impute them (e.g. sklearn.impute.SimpleImputer) before fit or predict"
        )
