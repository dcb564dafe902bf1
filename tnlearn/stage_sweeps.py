"""Two-site sweeps of a stage below the MPS head (the conv stage).

The head's output is multilinear in its local vectors, and every local vector
is the (normalised) output of the conv MPS on one patch; so with the head
fixed, a merged conv block's gradient is the head's input gradient
(:func:`tnlearn.backprop.head_input_gradient`) pulled back through the channel
normalisation and summed over all samples *and* all patch positions — one
:meth:`LocalProblem.gradient` over the patch-major pseudo-sample axis.  The
loss is not quadratic in the block (every patch uses it), so the step is found
by backtracking on the true loss; each trial is judged after the truncation
the split will apply (:func:`truncate_block`), so with the default, exact conv bond
every bond update lowers the loss or leaves the network as it was.  (With a capped
``max_bond``, moving the channel index across a bond can force a cut that raises the
loss; the sweep then keeps the least harmful candidate.)  The block is then split by
truncated SVD and the conv environments advanced, exactly as in
:func:`tnlearn.sweeps.half_sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tnlearn.backprop import head_input_gradient, output_loss
from tnlearn.local_problem import LocalProblem
from tnlearn.stages.conv import normalise_channels
from tnlearn.stages.mps import block_matrix, matrix_to_block
from tnlearn.sweeps import BondInfo, advance_past_bond, build_environments
from tnlearn.truncation import truncated_svd


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
        (:func:`tnlearn.backprop.output_loss`); ``"cosine"`` ignores the
        per-sample output scale, which the prediction ignores too.
    """

    max_bond: int
    cutoff: float = 1e-10
    initial_step: float = 0.1
    max_backtracks: int = 8
    chunk_size: int = 65536
    loss: str = "cosine"


def head_loss(head, v_sites, y, loss="cosine", chunk_size=4096):
    """Mean loss (:func:`tnlearn.backprop.output_loss`) of the head's normalised outputs (host float)."""
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
    U, s, Vh, info = truncated_svd(mat, opts.max_bond, opts.cutoff, "rsum2")
    if info.kept == len(info.singular_values):
        return Bs
    approx = matrix_to_block((U * s) @ Vh, shape, direction)
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
    bonds = range(q - 1) if direction == "right" else range(q - 2, -1, -1)
    infos, losses = [], []
    for j in bonds:
        left, left_log = conv_envs.get(j)
        right, right_log = conv_envs.get(j + 2)
        problem = LocalProblem(
            left, left_log, phi_patch[j], phi_patch[j + 1], right, right_log, c, be, opts.chunk_size, False
        )
        Bs = problem.to_scaled(net.merge(j), net.log_norm)

        def loss_of(block):
            v, _ = normalise_channels(problem.forward(block), xp)
            return head_loss(head, v.reshape(K, n, c), y, opts.loss, head_opts.chunk_size)

        u = problem.forward(Bs)
        v, norms = normalise_channels(u, xp)
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
        tinfo = net.split(j, block, log_norm, direction, opts.max_bond, opts.cutoff, "rsum2")
        advance_past_bond(conv_envs, phi_patch, net.cores, j, direction)
        info = BondInfo(j, direction, tinfo.kept, tinfo.discarded_weight)
        infos.append(info)
        losses.append((before, after))
        if on_bond is not None:
            on_bond(info)
    return infos, losses
