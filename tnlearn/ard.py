"""Automatic rank determination (ARD) for two-site sweeps: a per-slice Gaussian prior on the bonds.

Hawkins & Zhang (arXiv 1905.10478; end to end with stochastic variational
inference, arXiv 2010.08689) learn the TT-ranks of a tensorised layer by
placing on every *rank slice* ``r`` of bond ``k`` (the slice ``G_k[..., r]``
together with ``G_{k+1}[r, ...]``) a zero-mean Gaussian prior with one variance
``lambda_{k,r}``, and a sparsity-inducing hyperprior on the variances.  Slices
the data do not support are driven to zero and removed.

In a two-site sweep the network is kept in mixed-canonical gauge: every core
but the merged centre block is orthonormal, so the whole weight of slice ``r``
of a bond sits in one core (the other half has unit norm per slice and carries
no information).  The prior therefore acts on the non-orthonormal half, and the
sweep uses it in its two natural places:

* **the local problem.**  The merged block ``B`` of bond ``j`` has shape
  ``(a, ..., b)``; its outer legs are bonds ``j - 1`` and ``j + 1`` and, in
  this gauge, ``||B[r]||`` and ``||B[..., r]||`` are those bonds' slice weights.
  The negative log prior per training sample adds a per-slice weighted L2
  penalty to the mean training loss (``N`` samples, :func:`block_penalty`)::

      P(B) = 1 / (2 N) * ( sum_r p_{j-1,r} ||B[r, ...]||^2 + sum_r p_{j+1,r} ||B[..., r]||^2 )

* **the split.**  After the block is cut by SVD, ``B = U diag(s) Vh``, slice
  ``r`` of bond ``j`` has squared weight ``s_r^2`` spread over ``D`` entries
  (the size of the core that carries ``diag(s)``).  Its variance is
  re-estimated by maximum a posteriori under an inverse-Gamma(``a``, ``b``)
  hyperprior (type-II / ARD style)::

      lambda_{j,r} = (s_r^2 + 2 b) / (D + 2 a + 2)

  (:func:`slice_variances`), and slices whose standard deviation fell below
  ``tol`` times the bond's largest are removed (:func:`n_supported`).

Minimising over ``lambda`` the plain ARD penalty (``p = 1 / lambda``) becomes
``D / (2N) * log ||g_r||^2`` per slice (for ``a = b = 0``): a group-sparsity
penalty whose pull on a slice grows as the slice shrinks.  On its own that
penalty has no floor: a layer followed by a ReLU and a dense layer can shrink
*every* slice by ``c`` and let the next layer grow by ``1 / c`` (the network is
unchanged, the penalty falls without end), and we measured exactly that: all
slices shrink together, none is removed and the cross-entropy rises.  The
precision used is therefore relative to the bond's strongest slice,
``p_r = 1 / lambda_r - 1 / lambda_max`` (:func:`relative_precisions`): the
strongest slice is free, the bond's scale stays where the data put it, and
a slice is pulled to zero in proportion to how much weaker than the strongest
it is.  The first visit of a bond (no variance estimated yet) is not penalised.
"""

from __future__ import annotations

import numpy as np


def slice_variances(singular_values, slice_size, a=0.0, b=0.0):
    """MAP variances ``lambda_r = (s_r^2 + 2 b) / (D + 2 a + 2)`` of a bond's rank slices.

    Parameters
    ----------
    singular_values : array, shape (r,)
        The kept singular values of the split (the slice weights).
    slice_size : int
        ``D``, the number of entries of one slice of the core that carries them.
    a, b : float
        Shape and scale of the inverse-Gamma hyperprior (0, 0: the scale-free
        Jeffreys-like limit).

    Returns
    -------
    ndarray, shape (r,), float64
    """
    s = np.asarray(singular_values, dtype=np.float64)
    if slice_size < 1:
        raise ValueError(f"slice_size={slice_size} must be >= 1")
    if a < 0 or b < 0:
        raise ValueError(f"hyperprior a={a}, b={b} must be >= 0")
    return (s * s + 2.0 * b) / (slice_size + 2.0 * a + 2.0)


def n_supported(variances, tol):
    """How many leading slices keep a standard deviation ``>= tol`` times the largest (at least 1).

    Parameters
    ----------
    variances : array, shape (r,)
        Slice variances in decreasing order (as from the singular values of a split).
    tol : float
        Relative standard-deviation threshold in (0, 1).

    Returns
    -------
    int
    """
    lam = np.asarray(variances, dtype=np.float64)
    if lam.size == 0 or not lam[0] > 0:
        return 1
    return max(1, int(np.count_nonzero(np.sqrt(lam / lam[0]) >= tol)))


def relative_precisions(variances):
    """Per-slice precisions relative to the bond's strongest slice: ``1/lambda_r - 1/lambda_max`` (>= 0).

    The strongest slice of a bond is not penalised, so the bond's overall scale
    stays where the data put it and only the *relative* weight of the other
    slices is judged; see the module docstring for why (a ReLU network can
    trade the TT layer's scale for the next layer's).

    Parameters
    ----------
    variances : array, shape (r,)

    Returns
    -------
    ndarray, shape (r,)
    """
    lam = np.maximum(np.asarray(variances, dtype=np.float64), np.finfo(np.float64).tiny)
    return 1.0 / lam - 1.0 / lam.max()


def precision_profile(left, right, ndim, xp=np):
    """The per-entry prior precision ``p_left[a] + p_right[b]`` of a block, broadcastable.

    Parameters
    ----------
    left, right : array or None
        Variances of the block's first and last leg (None: that leg is not
        penalised); turned into precisions by :func:`relative_precisions`.
    ndim : int
        Number of dimensions of the block (first and last are the legs).
    xp : module

    Returns
    -------
    array broadcastable to the block's shape, or None when neither leg is penalised.
    """
    prec = None
    if left is not None:
        prec = relative_precisions(left).reshape((-1,) + (1,) * (ndim - 1))
    if right is not None:
        term = relative_precisions(right).reshape((1,) * (ndim - 1) + (-1,))
        prec = term if prec is None else prec + term
    return None if prec is None else xp.asarray(prec)


def penalty_gradient(block, precision, n_samples):
    """``precision * B / N``, the gradient of :func:`block_penalty` (no reduction: no device sync).

    The per-step part of the penalty, for the Adam loop of a bond.
    """
    return (precision * block / n_samples).astype(block.dtype)


def block_penalty(block, precision, n_samples):
    """``P(B) = sum(precision * B**2) / (2 N)`` and its gradient ``precision * B / N``.

    Parameters
    ----------
    block : array
    precision : array broadcastable to ``block`` (from :func:`precision_profile`) or None
    n_samples : int

    Returns
    -------
    penalty : float
    gradient : array like ``block`` (zeros when ``precision`` is None)
    """
    if precision is None:
        return 0.0, block * 0
    penalty = float((precision * block * block).sum()) / (2.0 * n_samples)
    return penalty, penalty_gradient(block, precision, n_samples)


__all__ = ["block_penalty", "n_supported", "penalty_gradient", "precision_profile", "relative_precisions",
           "slice_variances"]
