"""Truncated SVD: the rank-selecting split used by every two-site update.

The vocabulary is quimb's (``max_bond``, ``cutoff``, ``cutoff_mode``).  The
matrices split here are small merged blocks (a few hundred rows and columns),
so the SVD always runs on the host with LAPACK; the caller moves the factors
back to its backend.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import scipy.linalg

CUTOFF_MODES = ("rsum2", "rel", "abs")


@dataclass(frozen=True)
class TruncationInfo:
    """What a truncated split kept and threw away.

    Attributes
    ----------
    kept : int
        Number of singular values kept (the new bond dimension).
    discarded_weight : float
        ``sum(s[kept:]**2) / sum(s**2)``: the relative squared Frobenius norm
        thrown away, the DMRG "truncation error".
    singular_values : ndarray, shape (min(rows, cols),)
        All singular values, largest first.
    """

    kept: int
    discarded_weight: float
    singular_values: np.ndarray


def _relative_squares(s):
    """``(s / s[0])**2`` in float64: the squared weights, free of the matrix's scale (no under/overflow)."""
    s = np.asarray(s, dtype=np.float64)
    top = float(s[0]) if s.size else 0.0
    return (s / top) ** 2 if top > 0 else np.zeros_like(s)


def _n_keep(s, max_bond, cutoff, cutoff_mode):
    s2 = _relative_squares(s)
    total = float(s2.sum())
    if total == 0.0:
        return 1
    if cutoff <= 0:
        k = len(s)
    elif cutoff_mode == "rel":
        k = int(np.count_nonzero(s > cutoff * s[0]))
    elif cutoff_mode == "abs":
        k = int(np.count_nonzero(s > cutoff))
    else:  # rsum2: drop the largest tail whose squared weight is <= cutoff * total
        tail = np.cumsum(s2[::-1])[::-1]  # tail[i] = sum(s2[i:])
        allowed = tail <= cutoff * total
        k = int(np.argmax(allowed)) if allowed.any() else len(s)
    if max_bond is not None:
        k = min(k, int(max_bond))
    return max(k, 1)


@dataclass(frozen=True)
class Truncation:
    """How a split truncates, in quimb's vocabulary (checked on construction).

    Attributes
    ----------
    max_bond : int or None
        Keep at most this many singular values (None: no cap).
    cutoff : float
        Threshold, read by ``cutoff_mode`` (0 keeps every non-zero value).
    cutoff_mode : {"rsum2", "rel", "abs"}
        See :func:`truncated_svd`.
    """

    max_bond: int | None = None
    cutoff: float = 0.0
    cutoff_mode: str = "rsum2"

    def __post_init__(self):
        check_truncation_args(self.max_bond, self.cutoff, self.cutoff_mode, allow_none=True)


def split_matrix(matrix, direction, truncation):
    """The truncated SVD split ``matrix ~= left @ right`` every stage's ``split`` is built on.

    Parameters
    ----------
    matrix : ndarray, shape (m, n)
        Host array.
    direction : {"right", "left"}
        Where the singular values go, i.e. which factor becomes the new centre:
        ``"right"``: ``left = U`` (orthonormal columns), ``right = S Vh``;
        ``"left"``: ``left = U S``, ``right = Vh`` (orthonormal rows).
    truncation : Truncation

    Returns
    -------
    left : ndarray, shape (m, k)
    right : ndarray, shape (k, n)
    info : TruncationInfo
    """
    U, s, Vh, info = truncated_svd(matrix, truncation.max_bond, truncation.cutoff, truncation.cutoff_mode)
    if direction == "right":
        return U, s[:, None] * Vh, info
    if direction == "left":
        return U * s[None, :], Vh, info
    raise ValueError(f"direction={direction!r}; use 'right' or 'left'")


def check_truncation_args(max_bond, cutoff, cutoff_mode, allow_none=False):
    """Validate truncation settings, raising a ``ValueError`` that names the fix.

    Parameters
    ----------
    max_bond : int or None
        An integer >= 1; ``None`` (no cap) only with ``allow_none=True``: the
        estimators size their environment caches by ``max_bond``, so they need a cap.
    cutoff : float
        A finite real number >= 0.
    cutoff_mode : {"rsum2", "rel", "abs"}
    allow_none : bool, default=False
        Accept ``max_bond=None`` (as :func:`truncated_svd` does).
    """
    if max_bond is None:
        if not allow_none:
            raise ValueError(
                "max_bond=None (no cap) is not supported here: the environments are sized by "
                "max_bond; pass an integer >= 1, e.g. max_bond=16"
            )
    elif isinstance(max_bond, bool) or not isinstance(max_bond, (int, np.integer)) or max_bond < 1:
        raise ValueError(f"max_bond={max_bond!r} must be an integer >= 1, e.g. max_bond=16")
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real) or not np.isfinite(cutoff) or cutoff < 0:
        raise ValueError(
            f"cutoff={cutoff!r} must be a finite real number >= 0, e.g. cutoff=1e-10 (0 disables the cutoff)"
        )
    if cutoff_mode not in CUTOFF_MODES:
        raise ValueError(f"cutoff_mode={cutoff_mode!r} is not known; choose one of {CUTOFF_MODES}")


def truncated_svd(matrix, max_bond=None, cutoff=0.0, cutoff_mode="rsum2"):
    """Truncated singular value decomposition ``matrix ~= U @ diag(s) @ Vh``.

    Parameters
    ----------
    matrix : ndarray, shape (m, n)
        Host array.
    max_bond : int or None
        Keep at most this many singular values.
    cutoff : float
        Truncation threshold, interpreted by ``cutoff_mode``.
    cutoff_mode : {"rsum2", "rel", "abs"}
        ``"rsum2"``: discard the smallest values whose summed squares are at
        most ``cutoff`` times the total (the discarded weight); ``"rel"``: keep
        ``s > cutoff * s[0]``; ``"abs"``: keep ``s > cutoff``.

    Returns
    -------
    U : ndarray, shape (m, k)
    s : ndarray, shape (k,)
    Vh : ndarray, shape (k, n)
    info : TruncationInfo
    """
    matrix = _finite(matrix)
    try:
        U, s, Vh = np.linalg.svd(matrix, full_matrices=False)
    except np.linalg.LinAlgError:  # gesdd can fail to converge; gesvd is slower but robust
        U, s, Vh = scipy.linalg.svd(matrix, full_matrices=False, lapack_driver="gesvd")
    info = _truncation(s, max_bond, cutoff, cutoff_mode)
    k = info.kept
    return U[:, :k], s[:k], Vh[:k], info


def _finite(matrix):
    """``matrix`` as an array, or the error that a diverged local update gets."""
    matrix = np.asarray(matrix)
    if not np.all(np.isfinite(matrix)):
        raise FloatingPointError(
            "the merged block contains NaN or inf before the SVD split: the local update diverged; "
            "lower step_size or use step_size='auto'"
        )
    return matrix


def _truncation(s, max_bond, cutoff, cutoff_mode):
    """What a split keeps of the singular values ``s`` (largest first) and what it discards."""
    k = _n_keep(s, max_bond, cutoff, cutoff_mode)
    s2 = _relative_squares(s)
    total = s2.sum()
    discarded = float(s2[k:].sum() / total) if total > 0 else 0.0
    return TruncationInfo(kept=k, discarded_weight=discarded, singular_values=s)


def truncated_row_basis(matrix, max_bond=None, cutoff=0.0, cutoff_mode="rsum2"):
    """The kept left singular vectors and values of ``matrix``, from its row Gram matrix.

    For a wide matrix (``m <= n``) the eigen-decomposition of the ``m x m``
    matrix ``matrix @ matrix.T`` (White's reduced density matrix) gives the
    left singular vectors and the squared singular values at a fraction of
    the cost of an SVD, which would also compute the ``n``-long right vectors.
    Squaring limits the resolution of singular values to about
    ``sqrt(eps) * s[0]`` (1e-8 relative in float64): far below any weight a
    truncation keeps or reports.  Tall matrices go through :func:`truncated_svd`.

    Parameters
    ----------
    matrix : ndarray, shape (m, n)
    max_bond, cutoff, cutoff_mode
        As :func:`truncated_svd`.

    Returns
    -------
    U : ndarray, shape (m, k)
        Orthonormal columns, the kept left singular vectors (largest first).
    s : ndarray, shape (k,)
    info : TruncationInfo
    """
    matrix = _finite(matrix)
    m, n = matrix.shape
    if m > n:
        U, s, _, info = truncated_svd(matrix, max_bond, cutoff, cutoff_mode)
        return U, s, info
    scale = float(np.max(np.abs(matrix))) if matrix.size else 0.0
    scale = scale if scale > 0 else 1.0
    m64 = matrix.astype(np.float64) / scale  # scale free: the Gram of tiny or huge entries would under/overflow
    w, V = np.linalg.eigh(m64 @ m64.T)
    s = np.sqrt(np.maximum(w[::-1], 0.0)) * scale
    info = _truncation(s, max_bond, cutoff, cutoff_mode)
    k = info.kept
    return np.ascontiguousarray(V[:, ::-1][:, :k]), s[:k], info


def metric_truncated_split(matrix, left_sqrt, left_inv_sqrt, right_sqrt, max_bond=None, cutoff=0.0, cutoff_mode="rsum2"):
    """Best rank-``k`` split ``matrix ~= Q @ C`` in a data metric, with ``Q`` an isometry.

    The error is measured as ``|Gl^(1/2) (M - Q C) Gr^(1/2)|_F`` with ``Gl``
    and ``Gr`` the Gram matrices of the data seen through the rows and the
    columns (for a two-site block: the left and right halves of the per-sample
    projected inputs), so the truncation drops what changes the model *outputs*
    least, rather than what is smallest in Frobenius norm.  With identity Grams
    this is the ordinary truncated SVD.

    Parameters
    ----------
    matrix : ndarray, shape (m, n)
    left_sqrt, left_inv_sqrt : ndarray, shape (m, m)
        ``Gl^(1/2)`` and its inverse ``Gl^(-1/2)`` (e.g. from
        :func:`tnlearn.gram.psd_sqrt`; ``Gl`` is then ``left_sqrt @ left_sqrt``).
    right_sqrt : ndarray, shape (n, n), or callable
        ``Gr^(1/2)``, or a function ``X (r, n) -> X @ Gr^(1/2)`` (for a metric
        with structure, e.g. a Kronecker product with an identity, that is
        cheaper to apply than to form).
    max_bond, cutoff, cutoff_mode
        As :func:`truncated_svd`, applied to the singular values of
        ``Gl^(1/2) M Gr^(1/2)``.

    Returns
    -------
    Q : ndarray, shape (m, k)
        Orthonormal columns spanning the kept row space.
    C : ndarray, shape (k, n)
        The optimal coefficients given ``Q``: ``(Q^T Gl Q)^-1 Q^T Gl M``.
    info : TruncationInfo
        ``discarded_weight`` is the relative squared error in the data metric.
    """
    lm = left_sqrt @ matrix
    whitened = right_sqrt(lm) if callable(right_sqrt) else lm @ right_sqrt
    U, _, info = truncated_row_basis(whitened, max_bond, cutoff, cutoff_mode)
    Q, R = np.linalg.qr(left_inv_sqrt @ U)
    # with Q R = Gl^(-1/2) U and U orthonormal: Q^T Gl Q = R^-T R^-1 and Q^T Gl M = R^-T U^T Gl^(1/2) M,
    # so the optimal C = (Q^T Gl Q)^-1 Q^T Gl M is R U^T (Gl^(1/2) M): no solve, and no Gram
    # matrix of Q (whose condition number would be R's squared)
    C = R @ (U.T @ lm)
    return Q, C, info
