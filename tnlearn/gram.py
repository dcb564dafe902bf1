"""Data Gram matrices of a block's halves and the factors a bond update derives from them.

A two-site update uses each half-block Gram matrix ``G`` (symmetric positive
semi-definite, ``(k, k)`` with ``k = Dl d`` or ``d Dr``) twice: the Kronecker
preconditioner needs ``(G + lam I)^-1`` and the data-metric split needs
``G^(1/2)`` and ``G^(-1/2)``.  All three come from one eigendecomposition.  A
:class:`GramMatrix` computes it once, and each factor once, on first use; as
a half-block's Gram is reused from the previous visit of its environment
(:meth:`tnlearn.environments.EnvironmentCache.cached_grams`), so are its
factors.  At ``m = 20`` this takes a bond from five ``40 x 40`` ``eigh`` calls
to two (the fresh Gram's and the split's row basis): small dense algebra that
runs on the host between device passes, so it sets the floor of a GPU sweep.

The pure functions (:func:`damped_inverse`, :func:`psd_sqrt`) take a matrix;
the ``*_from_eigh`` kernels take its eigendecomposition.
"""

from __future__ import annotations

import numpy as np


def symmetric_eigh(G):
    """Eigendecomposition of the symmetric part of ``G`` (host, float64).

    Parameters
    ----------
    G : ndarray, shape (k, k)

    Returns
    -------
    w : ndarray, shape (k,)
        Eigenvalues, ascending.
    V : ndarray, shape (k, k)
        Orthonormal eigenvectors (columns).
    """
    return np.linalg.eigh((G + G.T) / 2)


def damping_shift(G, damping):
    """The Tikhonov shift ``damping * trace(G) / k`` (``damping`` times the mean eigenvalue), > 0.

    Parameters
    ----------
    G : ndarray, shape (k, k)
    damping : float

    Returns
    -------
    float
        Floored at the smallest positive float, so a zero Gram is still invertible.
    """
    return damping * max(float(np.trace(G)) / G.shape[0], np.finfo(np.float64).tiny)


def damped_inverse_from_eigh(w, V, shift):
    """``(G + shift I)^-1`` from ``G``'s eigendecomposition.

    Parameters
    ----------
    w : ndarray, shape (k,)
        Eigenvalues of ``G``; negative rounding values are clipped to 0.
    V : ndarray, shape (k, k)
        Eigenvectors of ``G``.
    shift : float
        > 0 (:func:`damping_shift`).

    Returns
    -------
    ndarray, shape (k, k)
    """
    w = np.maximum(w, 0.0) + shift
    return (V / w) @ V.T


def psd_sqrt_from_eigh(w, V, rel_floor=1e-8):
    """``G^(1/2)`` and ``G^(-1/2)`` from ``G``'s eigendecomposition.

    Parameters
    ----------
    w : ndarray, shape (k,)
        Eigenvalues of ``G``, raised to at least ``rel_floor * max(w)`` (1 for
        an all-zero ``G``), so that both factors exist and are exact inverses.
    V : ndarray, shape (k, k)
    rel_floor : float

    Returns
    -------
    sqrt, inv_sqrt : ndarray, shape (k, k)
    """
    top = max(float(w.max()), 0.0)
    w = np.maximum(w, rel_floor * top if top > 0 else 1.0)
    r = np.sqrt(w)
    return (V * r) @ V.T, (V / r) @ V.T


def damped_inverse(G, damping):
    """Inverse of ``G + damping * mean(eig(G)) * I`` for a symmetric PSD ``G`` (host, float64).

    Parameters
    ----------
    G : ndarray, shape (k, k)
    damping : float

    Returns
    -------
    ndarray, shape (k, k)
    """
    return damped_inverse_from_eigh(*symmetric_eigh(G), damping_shift(G, damping))


def psd_sqrt(G, rel_floor=1e-8):
    """Square root and inverse square root of a symmetric positive semi-definite matrix.

    Eigenvalues below ``rel_floor * max(eigenvalue)`` are raised to that floor,
    so the inverse exists for rank-deficient Gram matrices.

    Parameters
    ----------
    G : ndarray, shape (k, k)

    Returns
    -------
    sqrt, inv_sqrt : ndarray, shape (k, k)
    """
    return psd_sqrt_from_eigh(*symmetric_eigh(G), rel_floor)


class GramMatrix:
    """A host Gram matrix with its eigendecomposition and derived factors, each computed once.

    Parameters
    ----------
    matrix : ndarray, shape (k, k), float64
        Symmetric positive semi-definite (a sum of outer products of samples).

    Notes
    -----
    ``numpy.asarray(gram)`` is the matrix itself, so a :class:`GramMatrix`
    stands wherever the plain matrix is read.
    """

    __slots__ = ("matrix", "_eigh", "_factors")

    def __init__(self, matrix):
        self.matrix = np.array(matrix, dtype=np.float64)  # its own copy, read-only: the factors stay valid
        self.matrix.setflags(write=False)
        self._eigh = None
        self._factors = {}

    def __array__(self, dtype=None, copy=None):
        if copy or (dtype is not None and np.dtype(dtype) != self.matrix.dtype):
            return self.matrix.astype(self.matrix.dtype if dtype is None else dtype)  # a writable copy
        return self.matrix

    @property
    def shape(self):
        return self.matrix.shape

    @property
    def eigh(self):
        """``(w, V)``: eigenvalues (ascending) and eigenvectors of the symmetric part."""
        if self._eigh is None:
            self._eigh = symmetric_eigh(self.matrix)
        return self._eigh

    def _factor(self, key, make):
        if key not in self._factors:
            self._factors[key] = make()
        return self._factors[key]

    def damped_inverse(self, damping):
        """``(G + damping * mean(eig(G)) I)^-1``, as :func:`damped_inverse` (cached per ``damping``)."""
        return self._factor(("damped_inverse", damping),
                            lambda: damped_inverse_from_eigh(*self.eigh, damping_shift(self.matrix, damping)))

    def damped_inverse_on(self, backend, damping, dtype):
        """:meth:`damped_inverse` as a ``dtype`` array of ``backend``: one host-to-device copy per Gram."""
        return self._factor(("damped_inverse", damping, id(backend), np.dtype(dtype).name),
                            lambda: backend.asarray(self.damped_inverse(damping).astype(dtype)))

    def sqrt_and_inv_sqrt(self, rel_floor=1e-8):
        """``(G^(1/2), G^(-1/2))``, as :func:`psd_sqrt` (cached)."""
        return self._factor(("sqrt", rel_floor), lambda: psd_sqrt_from_eigh(*self.eigh, rel_floor))


def as_gram(G):
    """``G`` as a :class:`GramMatrix` (itself when it is one already).

    Parameters
    ----------
    G : ndarray, shape (k, k), or GramMatrix

    Returns
    -------
    GramMatrix
    """
    return G if isinstance(G, GramMatrix) else GramMatrix(G)
