"""Sweeps of the conv stage under the MPS head: the head's input gradient, and the conv bonds' updates.

**Back-propagation through the head.** Gradients of an MPS head with respect to its inputs, for the stages below it.

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

**The conv sweep.** Two-site sweeps of a stage below the MPS head (the conv stage).

The head's output is multilinear in its local vectors, and every local vector
is the (normalised) output of the conv MPS on one patch; so with the head
fixed, a merged conv block's gradient is the head's input gradient
(:func:`head_input_gradient`) pulled back through the channel
normalisation and summed over all samples *and* all patch positions — one
:meth:`LocalProblem.gradient` over the patch-major pseudo-sample axis.  The
loss is not quadratic in the block (every patch uses it), so the step is found
by backtracking on the true loss; each trial is judged after the truncation
the split will apply (:func:`truncate_block`), so with the default, exact conv bond
every bond update lowers the loss or leaves the network as it was.  (With a capped
``max_bond``, moving the channel index across a bond can force a cut that raises the
loss; the sweep then keeps the least harmful candidate.)  The block is then split by
truncated SVD and the conv environments advanced, exactly as in
:func:`tnlearn.sweeps.sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tnlearn.local_problem import LocalProblem
from tnlearn.rows import log_normalise_rows, normalise_rows
from tnlearn.stages.mps import block_matrix, matrix_to_block
from tnlearn.sweeps import BondInfo, advance_past_bond, bond_sequence, build_environments
from tnlearn.truncation import Truncation, split_matrix


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
        fhat, norms = normalise_rows(f, xp)
        cos = xp.sum(fhat * y, axis=1, keepdims=True)
        return float(xp.sum(1 - cos.astype(np.float64))), -(y - cos * fhat) / xp.maximum(norms, 1e-30)[:, None]
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
        u_log = log_normalise_rows(u, xp)
        for k in range(1, n_sites):
            right, right_log = envs.get(k + 1)
            core = head.cores[k]
            Dl, _, Dr = core.shape
            Tk = (u @ core.reshape(Dl, d * Dr)).reshape(-1, d, Dr)
            factor = xp.exp(u_log + right_log[sl] - log1).astype(phi_sites.dtype)
            grad[k, sl] = be.row_contract(Tk, right[sl]) * factor[:, None]
            u = xp.einsum("nsb,ns->nb", Tk, phi_sites[k, sl])
            u_log = u_log + log_normalise_rows(u, xp)
    return total / n, grad


@dataclass(frozen=True)
class ConvSweepOptions:
    """Settings of a conv-stage sweep.

    Attributes
    ----------
    max_bond : int
        Largest conv bond dimension.
    cutoff : float
    initial_step : float
        First trial step as a fraction of ``|block| / |gradient|``.
    max_backtracks : int
        Step reductions (each by a factor of 4) tried before the bond is left unchanged.
    chunk_size : int
        Pseudo-samples (patches) per chunk.
    loss : {"cosine", "mse"}
        Loss of the head's normalised outputs that the conv stage lowers
        (:func:`output_loss`); ``"cosine"`` ignores the
        per-sample output scale, which the prediction ignores too.
    """

    max_bond: int
    cutoff: float = 1e-10
    initial_step: float = 0.1
    max_backtracks: int = 8
    chunk_size: int = 65536
    loss: str = "cosine"


def head_loss(head, v_sites, y, loss="cosine", chunk_size=4096):
    """Mean loss (:func:`output_loss`) of the head's normalised outputs (host float)."""
    f = head.decision_function(v_sites, chunk_size, normalized=True)
    value, _ = output_loss(f, head.backend.asnumpy(y).astype(np.float64), loss, np)
    return value / v_sites.shape[1]


def truncate_block(Bs, problem, direction, opts):
    """The working block as the split will leave it: truncated SVD in the split's orientation.

    Parameters
    ----------
    Bs : array, shape (Dl * d * d, L * Dr)
    problem : LocalProblem
        Gives the block's shape.
    direction : {"right", "left"}
    opts : ConvSweepOptions

    Returns
    -------
    array, shape (Dl * d * d, L * Dr)
        ``Bs`` itself (the same object) when the split keeps every singular value.
    """
    be = problem.backend
    shape = (problem.Dl, problem.d, problem.d, problem.n_labels, problem.Dr)
    mat = block_matrix(be.asnumpy(Bs).reshape(shape), direction)
    if not np.all(np.isfinite(mat)):
        return Bs  # let the loss (inf / nan) reject it
    left, right, info = split_matrix(mat, direction, Truncation(opts.max_bond, opts.cutoff))
    if info.kept == len(info.singular_values):
        return Bs
    approx = matrix_to_block(left @ right, shape, direction)
    return be.asarray(np.ascontiguousarray(approx).reshape(Bs.shape).astype(Bs.dtype))


def conv_half_sweep(conv, conv_envs, phi_patch, head, y, head_opts, opts, direction, steps, on_bond=None):
    """Update every bond of the conv MPS once, moving its channel index across it.

    Parameters
    ----------
    conv : ConvStage
    conv_envs : EnvironmentCache
        The conv MPS's environments over the pseudo-sample axis.
    phi_patch : array, shape (q, n_patches * n, d)
    head : MPSHead
        The stage above, label on site 0; fixed here.
    y : array, shape (n, L)
    head_opts : SweepOptions
        Of the head (its environments are rebuilt for every conv bond).
    opts : ConvSweepOptions
    direction : {"right", "left"}
    steps : dict
        Step memory per bond (updated in place): the accepted step doubled.
    on_bond : callable, optional

    Returns
    -------
    infos : list of BondInfo
    losses : list of tuple
        ``(loss before, loss after)`` of every bond update; "after" is the loss
        of the network as the split leaves it (truncation included).
    """
    net = conv.net
    be = net.backend
    xp = be.xp
    n = y.shape[0]
    K, c = conv.n_patches, conv.n_channels
    q = net.n_sites
    infos, losses = [], []
    for j, _ in bond_sequence(q, direction):
        left, left_log = conv_envs.get(j)
        right, right_log = conv_envs.get(j + 2)
        problem = LocalProblem(
            left, left_log, phi_patch[j], phi_patch[j + 1], right, right_log, c, be, opts.chunk_size, False
        )
        Bs = problem.to_scaled(conv.merge(j), net.log_norm)

        def loss_of(block):
            v, _ = normalise_rows(problem.forward(block), xp)
            return head_loss(head, v.reshape(K, n, c), y, opts.loss, head_opts.chunk_size)

        u = problem.forward(Bs)
        v, norms = normalise_rows(u, xp)
        v_sites = v.reshape(K, n, c)
        henvs = build_environments(head, v_sites, head_opts)
        before, grad_v = head_input_gradient(head, henvs, v_sites, y, head_opts.chunk_size, opts.loss)
        del henvs
        gv = grad_v.reshape(K * n, c)
        grad_u = (gv - xp.sum(gv * v, axis=1, keepdims=True) * v) / xp.maximum(norms, 1e-30)[:, None]
        G = problem.gradient(grad_u.astype(Bs.dtype))
        g_norm = float(xp.linalg.norm(G))
        step = steps.get(j)
        if step is None or not np.isfinite(step):
            step = opts.initial_step * float(xp.linalg.norm(Bs)) / max(g_norm, 1e-300)
        # every trial is judged as it will be after the split's truncation; a step is taken
        # when it lowers the loss of the network the sweep leaves behind
        after, accepted, best = before, False, None
        if np.isfinite(g_norm) and g_norm > 0 and np.isfinite(step):
            for _ in range(opts.max_backtracks + 1):
                trial = truncate_block(Bs - step * G, problem, direction, opts)
                value = loss_of(trial)
                if value < before:
                    Bs, after, accepted = trial, value, True
                    steps[j] = 2 * step
                    break
                if best is None or value < best[0]:
                    best = (value, trial)
                step /= 4
            else:
                steps[j] = step
        if not accepted:
            truncated = truncate_block(Bs, problem, direction, opts)
            if truncated is not Bs:
                # moving the channel index across a capped bond forces a cut (with the
                # default, exact conv bond it never does): keep the least harmful candidate
                value = loss_of(truncated)
                Bs, after = (truncated, value) if best is None or value <= best[0] else (best[1], best[0])
        block, log_norm = problem.from_scaled(Bs)
        tinfo = conv.split(j, block, direction, Truncation(opts.max_bond, opts.cutoff), log_norm)
        advance_past_bond(conv_envs, phi_patch, net.cores, j, direction)
        info = BondInfo(j, direction, tinfo.kept, tinfo.discarded_weight)
        infos.append(info)
        losses.append((before, after))
        if on_bond is not None:
            on_bond(info)
    return infos, losses
