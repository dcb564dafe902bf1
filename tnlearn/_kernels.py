"""Row-wise (per-sample) kernels for the numpy backend, compiled by numba.

These are the memory-bound pieces of a bond step that sit between the BLAS
products: the per-sample outer product that forms the GEMM operands and the
per-sample contraction of a GEMM result with an environment.  numpy's
broadcasting runs them several times slower than a plain compiled loop
(its inner loops over the short bond axis are dominated by overhead).  The
loops are single-threaded on purpose: numba's OpenMP threads and OpenBLAS's
spinning threads fight over the cores when they alternate, which was measured
to make each kernel 20-50x slower.  They release the GIL instead, so that the
host's worker threads (:mod:`tnlearn.host_threads`) run them on different
chunks at the same time, each with single-threaded BLAS.  numba is already a
dependency of quimb, so it adds nothing to the install.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(fastmath=True, cache=True, nogil=True)
def _row_outer(a, b, out):  # pragma: no cover - compiled
    n, p = a.shape
    q = b.shape[1]
    if q == 2:
        # the local vectors of a d = 2 feature map: a 2-long inner loop costs more in loop
        # overhead than in work, so write both entries per step (measured 8x faster)
        for i in range(n):
            b0 = b[i, 0]
            b1 = b[i, 1]
            for j in range(p):
                v = a[i, j]
                out[i, 2 * j] = v * b0
                out[i, 2 * j + 1] = v * b1
        return
    for i in range(n):
        for j in range(p):
            aij = a[i, j]
            for k in range(q):
                out[i, j * q + k] = aij * b[i, k]


@numba.njit(fastmath=False, cache=True, nogil=True)
def _row_outer3_d2(a, b, c, out):  # pragma: no cover - compiled
    # d = 2 local vectors: all four products per step (see _row_outer), associated as
    # (a * b) * c exactly as row_outer(row_outer(a, b), c) rounds them (no fastmath: it
    # would be free to reassociate), so either path gives the same bits
    n, p = a.shape
    for i in range(n):
        b0, b1 = b[i, 0], b[i, 1]
        c0, c1 = c[i, 0], c[i, 1]
        for j in range(p):
            v0 = a[i, j] * b0
            v1 = a[i, j] * b1
            out[i, 4 * j] = v0 * c0
            out[i, 4 * j + 1] = v0 * c1
            out[i, 4 * j + 2] = v1 * c0
            out[i, 4 * j + 3] = v1 * c1


@numba.njit(fastmath=True, cache=True, nogil=True)
def _row_contract(t, r, out):  # pragma: no cover - compiled
    n, m, q = t.shape
    for i in range(n):
        for j in range(m):
            acc = t[i, j, 0] * r[i, 0]
            for k in range(1, q):
                acc += t[i, j, k] * r[i, k]
            out[i, j] = acc


@numba.njit(fastmath=True, cache=True, nogil=True)
def _row_residual_outer(t, r, y, scale, cross_entropy, f_out):  # pragma: no cover - compiled
    n, m, q = t.shape
    w = np.empty(m, dtype=np.float64)
    for i in range(n):
        s = scale[i]
        for j in range(m):
            acc = t[i, j, 0] * r[i, 0]
            for k in range(1, q):
                acc += t[i, j, k] * r[i, k]
            f_out[i, j] = acc * s
        if cross_entropy:
            top = f_out[i, 0]
            for j in range(1, m):
                top = max(top, f_out[i, j])
            total = 0.0
            for j in range(m):
                w[j] = np.exp(f_out[i, j] - top)
                total += w[j]
            for j in range(m):
                w[j] = (y[i, j] - w[j] / total) * s
        else:
            for j in range(m):
                w[j] = (y[i, j] - f_out[i, j]) * s
        for j in range(m):
            wj = w[j]
            for k in range(q):
                t[i, j, k] = wj * r[i, k]


@numba.njit(fastmath=True, cache=True, nogil=True)
def _row_normalise(env, norms, tiny):  # pragma: no cover - compiled
    n, m = env.shape
    for i in range(n):
        acc = 0.0  # float64 accumulator whatever the dtype of env
        for j in range(m):
            v = env[i, j]
            acc += v * v
        if acc > 0.0:
            nrm = np.sqrt(acc)
            inv = 1.0 / nrm
            for j in range(m):
                env[i, j] = env[i, j] * inv
            norms[i] = nrm
        else:
            norms[i] = tiny


def row_normalise(env):
    """Divide every row of ``env`` by its Euclidean norm, in place.

    Parameters
    ----------
    env : array, shape (n, m)

    Returns
    -------
    ndarray, shape (n,), float64
        The log norms (``log(1e-300)`` for an all-zero row, which is left as it is).
    """
    norms = np.empty(env.shape[0], dtype=np.float64)
    _row_normalise(env, norms, 1e-300)
    return np.log(norms)  # numpy's vectorised log: a scalar log per row in the loop costs more


def row_outer(a, b, out=None):
    """Per-sample outer product, flattened.

    Parameters
    ----------
    a : array, shape (n, p)
    b : array, shape (n, q)
    out : array, shape (n, p * q), optional

    Returns
    -------
    array, shape (n, p * q)
        ``out[i, j * q + k] = a[i, j] * b[i, k]``.
    """
    n, p = a.shape
    q = b.shape[1]
    if out is None:
        out = np.empty((n, p * q), dtype=np.result_type(a, b))
    _row_outer(a, b, out)
    return out


def row_outer3(a, b, c, out=None):
    """Per-sample outer product of three factors, flattened (one pass, no intermediate).

    Parameters
    ----------
    a : array, shape (n, p)
    b : array, shape (n, q)
    c : array, shape (n, r)
    out : array, shape (n, p * q * r), optional

    Returns
    -------
    array, shape (n, p * q * r)
        ``out[i, (j * q + k) * r + t] = a[i, j] * b[i, k] * c[i, t]``, i.e.
        ``row_outer(row_outer(a, b), c)``.
    """
    n, p = a.shape
    q, r = b.shape[1], c.shape[1]
    if q != 2 or r != 2:  # only d = 2 has a one-pass kernel; others go through the intermediate
        return row_outer(row_outer(a, b), c, out=out)
    if out is None:
        out = np.empty((n, p * q * r), dtype=np.result_type(a, b, c))
    _row_outer3_d2(a, b, c, out)
    return out


def row_contract(t, r, out=None):
    """Per-sample contraction of the last axis.

    Parameters
    ----------
    t : array, shape (n, m, q)
    r : array, shape (n, q)
    out : array, shape (n, m), optional

    Returns
    -------
    array, shape (n, m)
        ``out[i, j] = sum_k t[i, j, k] * r[i, k]``.
    """
    n, m, _ = t.shape
    if out is None:
        out = np.empty((n, m), dtype=np.result_type(t, r))
    _row_contract(t, r, out)
    return out


def check_fused_loss(loss):
    """The error for a loss the fused residual kernels do not know (both backends use it)."""
    if loss not in ("mse", "cross_entropy"):
        raise ValueError(f"loss={loss!r}: the fused residual knows 'mse' and 'cross_entropy'")


def row_residual_outer(t, r, y, scale, loss, f_out):
    """Outputs, loss residuals and the gradient operand of a chunk, in one pass over ``t``.

    Per sample ``i`` (``s = scale[i]``)::

        f_out[i, l] = s * sum_k t[i, l, k] * r[i, k]
        w[l]        = s * (y[i, l] - f_out[i, l])                 # loss="mse"
                      s * (y[i, l] - softmax(f_out[i])[l])        # loss="cross_entropy"
        t[i, l, k]  = w[l] * r[i, k]                              # overwritten in place

    so that ``t`` ends up holding the per-sample weights ``w (x) r`` whose product with
    the projected inputs is the gradient.  Fusing the three steps reads and writes each
    sample's ``(L, q)`` slice once while it is in the L1 cache (three separate passes
    stream it through memory three times).

    Parameters
    ----------
    t : array, shape (n, L, q), C-contiguous
        The forward product ``P @ Bs`` of the chunk; overwritten.
    r : array, shape (n, q)
        Right environments.
    y : array, shape (n, L)
        One-hot targets.
    scale : array, shape (n,)
        Per-sample output scale.
    loss : {"mse", "cross_entropy"}
    f_out : array, shape (n, L)
        Receives the outputs.

    Returns
    -------
    array, shape (n, L)
        ``f_out``.
    """
    check_fused_loss(loss)
    _row_residual_outer(t, r, y, scale, loss == "cross_entropy", f_out)
    return f_out


@numba.njit(fastmath=False, cache=True, nogil=True)
def _loss_sum(f, y, log_scale, scaled, cross_entropy):  # pragma: no cover - compiled
    n, m = f.shape
    z = np.empty(m, dtype=np.float64)
    total = 0.0
    for i in range(n):
        s = np.exp(log_scale[i]) if scaled else 1.0
        for j in range(m):
            z[j] = f[i, j] * s
        if cross_entropy:
            top = z[0]
            for j in range(1, m):
                top = max(top, z[j])
            acc = 0.0
            for j in range(m):
                acc += np.exp(z[j] - top)
            lse = top + np.log(acc)
            for j in range(m):
                total -= y[i, j] * (z[j] - lse)
        else:
            for j in range(m):
                r = z[j] - y[i, j]
                total += 0.5 * r * r
    return total


def loss_sum(f, y, loss, log_scale=None):
    """Summed loss of outputs against targets, in float64, in one pass.

    Parameters
    ----------
    f : array, shape (n, L)
        Outputs (any float dtype; each is taken to float64 first).
    y : array, shape (n, L)
        Targets (one-hot for a classifier; any weights are summed as given).
    loss : {"mse", "cross_entropy"}
        ``0.5 * sum (f - y)**2`` or ``-sum y * log_softmax(f)``.
    log_scale : array, shape (n,), optional
        Each sample's outputs are multiplied by ``exp(log_scale[i])`` first (the
        same network's outputs in another per-sample normalisation).

    Returns
    -------
    numpy.float64

    Raises
    ------
    ValueError
        For an unknown loss, or ``y`` / ``log_scale`` not of ``f``'s shape /
        length (the compiled loop does not check its bounds).
    """
    check_fused_loss(loss)
    if f.ndim != 2 or y.shape != f.shape:
        raise ValueError(f"loss_sum: outputs of shape {f.shape} and targets of shape {y.shape} must be (n, L) alike")
    scaled = log_scale is not None
    if scaled and log_scale.shape != (f.shape[0],):
        raise ValueError(f"loss_sum: log_scale of shape {log_scale.shape} must be ({f.shape[0]},), one per sample")
    return np.float64(_loss_sum(f, y, log_scale if scaled else np.zeros(1), scaled, loss == "cross_entropy"))

