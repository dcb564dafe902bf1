"""Gradients of an MPS head with respect to its inputs, for the stages below it.

A stage below the head (a conv stage) changes the head's local vectors; its
local update needs ``dC/dphi_k``, the gradient of the head's loss with respect
to the local vector of every site, for every sample.  With the label on site 0
and the cached right environments ``R_k`` (normalised, log norms kept), the
per-sample normalised output is::

    f[n, l] = exp(log_norm) * sum_{s, b} phi_0[n, s] A_0[s, l, b] R_1[n, b] / |R_1[n]|

and ``R_1 = G_1(phi_1) ... G_k(phi_k) R_{k+1}`` is linear in every ``phi_k``.
Back-propagation runs one row-vector chain ``u_k`` left to right (the mirror
image of the right environments), so the whole gradient costs about one
forward pass: O(N n m^2 d).
"""

from __future__ import annotations

import numpy as np

from tnlearn.environments import _normalise_rows


def output_loss(f, y, loss, xp):
    """Summed loss of normalised outputs ``f`` (n, L) and its gradient ``dC/df``.

    * ``"mse"``: ``C = 1/2 sum (f - y)^2``;
    * ``"cosine"``: ``C = sum_n (1 - f_n . y_n / |f_n|)``, one minus the cosine
      between each sample's output vector and its one-hot target.  It depends
      only on the direction of ``f_n``, like the predicted class, so it is
      blind to the per-sample scale of the outputs that the head's
      normalisations leave free.

    Returns
    -------
    value : float
    grad : array, shape (n, L)
    """
    if loss == "mse":
        r = f - y
        return float(xp.sum(r.astype(np.float64) ** 2)) / 2, r
    if loss == "cosine":
        norms = xp.maximum(xp.sqrt(xp.sum(f * f, axis=1, keepdims=True)), 1e-30)
        fhat = f / norms
        cos = xp.sum(fhat * y, axis=1, keepdims=True)
        return float(xp.sum(1 - cos.astype(np.float64))), -(y - cos * fhat) / norms
    raise ValueError(f"loss={loss!r} is not known; choose 'mse' or 'cosine'")


def head_input_gradient(head, envs, phi_sites, y, chunk_size=4096, loss="mse"):
    """Loss of the normalised outputs and its gradient w.r.t. every local vector.

    ``C = 1/n sum_n c(f[n], y[n])`` (:func:`output_loss`: ``"mse"`` or
    ``"cosine"``) with ``f`` as in the module docstring (what
    ``head.decision_function(..., normalized=True)`` returns).

    Parameters
    ----------
    head : MPSHead
        Label on site 0.
    envs : EnvironmentCache
        Valid right environments at bonds ``1 .. N`` (e.g. from
        :func:`tnlearn.sweeps.build_environments`).
    phi_sites : array, shape (N, n_samples, d)
    y : array, shape (n_samples, L)
        Targets (one-hot).
    chunk_size : int
    loss : {"mse", "cosine"}

    Returns
    -------
    loss : float
    grad : array, shape (N, n_samples, d)
        ``dC/dphi_k[n]``, on the head's backend, ``phi_sites.dtype``.
    """
    if head.center != 0:
        raise ValueError(f"head_input_gradient needs the label on site 0, it is on site {head.center}")
    be = head.backend
    xp = be.xp
    n_sites, n, d = phi_sites.shape
    grad = xp.empty(phi_sites.shape, dtype=phi_sites.dtype)
    core0 = head.cores[0][0]  # (d, L, D1)
    _, L, D1 = core0.shape
    scale0 = np.exp(head.log_norm)
    mat0 = core0.reshape(d, L * D1)
    total = 0.0
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        right1, log1 = envs.get(1)
        right1, log1 = right1[sl], log1[sl]
        T = (phi_sites[0, sl] @ mat0).reshape(-1, L, D1) * scale0
        f = be.row_contract(T, right1)
        value, r = output_loss(f, y[sl], loss, xp)
        total += value
        r = r / n  # dC/df
        grad[0, sl] = be.row_outer(r, right1) @ mat0.T * scale0
        q = xp.einsum("nlb,nl->nb", T, r)  # dC/d(R_1 / |R_1|)
        u = q - xp.sum(q * right1, axis=1, keepdims=True) * right1  # through the normalisation
        u_log = _normalise_rows(u, xp)
        for k in range(1, n_sites):
            right, right_log = envs.get(k + 1)
            core = head.cores[k]
            Dl, _, Dr = core.shape
            Tk = (u @ core.reshape(Dl, d * Dr)).reshape(-1, d, Dr)
            factor = xp.exp(u_log + right_log[sl] - log1).astype(phi_sites.dtype)
            grad[k, sl] = be.row_contract(Tk, right[sl]) * factor[:, None]
            u = xp.einsum("nsb,ns->nb", Tk, phi_sites[k, sl])
            u_log = u_log + _normalise_rows(u, xp)
    return total / n, grad
