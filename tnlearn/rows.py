"""Row normalisation: the one array-module implementation the environments, the conv channels and the losses share.

Squares are summed in float64 whatever the array's dtype (as the compiled
kernel of the numpy backend does, :func:`tnlearn._kernels.row_normalise`),
and the log norms, which the environments add up over the whole chain, are
float64.
"""

from __future__ import annotations

import numpy as np

#: the log norm a row of zeros gets (its normalised row stays zero)
TINY = 1e-300


def row_norms(x, xp):
    """Euclidean norm of every row of ``x`` (n, k), shape (n,), float64."""
    return xp.sqrt(xp.einsum("ij,ij->i", x, x, dtype=np.float64))


def normalise_rows(x, xp, out=None):
    """``x / |x|`` row by row (rows of zeros stay zero) and the norms.

    Parameters
    ----------
    x : array, shape (n, k)
    xp : module
        numpy or cupy.
    out : array, optional
        Where the normalised rows go (``out=x`` normalises in place).

    Returns
    -------
    normalised : array, shape (n, k)
    norms : array, shape (n,), float64
    """
    norms = row_norms(x, xp)
    safe = xp.where(norms > 0, norms, 1).astype(x.dtype)
    if out is None:
        return x / safe[:, None], norms
    xp.divide(x, safe[:, None], out=out)
    return out, norms


def log_normalise_rows(x, xp):
    """Normalise the rows of ``x`` in place; return their log norms (float64, ``log(TINY)`` for zero rows)."""
    _, norms = normalise_rows(x, xp, out=x)
    return xp.log(xp.maximum(norms, TINY))
