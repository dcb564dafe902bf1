"""The two-site DMRG sweeper: merge -> local update -> truncated split -> move.

The sweeper drives a stage (here :class:`~tnlearn.stages.mps.MPSHead`) over a
data set held as site-major local vectors ``phi_sites`` (shape
``(N, n_samples, d)``) and one-hot targets ``y`` (shape ``(n_samples, L)``), all
on one backend.  It never loops over samples in Python: every sample-dependent
step is a chunked matrix product inside
:class:`~tnlearn.local_problem.LocalProblem` and
:class:`~tnlearn.environments.EnvironmentCache`.

Data-parallel (MPI) runs pass a :class:`~tnlearn.distributed.Shard`: the
data and the environments are then this rank's samples, the local problem
reduces its sample sums across ranks, and the split of each bond is computed
on rank 0 and broadcast (:func:`~tnlearn.distributed.broadcast_cores`), so
all ranks hold the same model after every bond.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tnlearn.distributed import broadcast_cores
from tnlearn.environments import EnvironmentCache
from tnlearn.local_problem import LocalProblem
from tnlearn.solvers import SolverOptions, loss_value, solve_local


@dataclass(frozen=True)
class SweepOptions:
    """Truncation and solver settings of a sweep.

    Attributes
    ----------
    max_bond : int
    cutoff : float
    cutoff_mode : str
    solver : SolverOptions
    chunk_size : int
        Samples per chunk in every pass (bounds the temporaries).
    truncation : {"data", "svd"}
        ``"svd"``: the plain truncated SVD of the block (Frobenius-optimal);
        ``"data"``: the split that is optimal for the outputs on the training
        data (:func:`tnlearn.truncation.metric_truncated_split`).
    normalize_samples : bool
        Fit each block to per-sample normalised outputs (see
        :class:`~tnlearn.local_problem.LocalProblem`).
    """

    max_bond: int
    cutoff: float = 1e-10
    cutoff_mode: str = "rsum2"
    solver: SolverOptions = field(default_factory=SolverOptions)
    chunk_size: int = 4096
    truncation: str = "data"
    normalize_samples: bool = True


@dataclass
class BondInfo:
    """Result of one bond update: where, which way, what the split discarded."""

    bond: int
    direction: str
    kept: int
    discarded_weight: float


def build_environments(head, phi_sites, opts):
    """Environment cache for a head whose centre is at one end of the chain.

    With the centre at site 0 the right environments of bonds ``1 .. N`` are
    built; with it at site ``N - 1`` the left environments of bonds ``0 .. N-1``.
    """
    n_sites, n_samples, _ = phi_sites.shape
    width = max(opts.max_bond, max(head.bond_dims))
    envs = EnvironmentCache(n_sites, n_samples, width, phi_sites.dtype, head.backend, opts.chunk_size)
    if head.center == 0:
        for i in range(n_sites - 1, 0, -1):
            envs.advance_right(i, phi_sites[i], head.cores[i])
    elif head.center == n_sites - 1:
        for i in range(0, n_sites - 1):
            envs.advance_left(i, phi_sites[i], head.cores[i])
    else:
        raise ValueError(f"environments are built from a chain end; the label is on site {head.center}")
    return envs


def advance_past_bond(envs, phi_sites, cores, j, direction):
    """After the split of bond ``(j, j+1)``: the environment the next bond of the sweep needs.

    ``"right"``: the left environment through the new left-canonical site ``j``;
    ``"left"``: the right environment through the new right-canonical site ``j + 1``.
    """
    if direction == "right":
        envs.advance_left(j, phi_sites[j], cores[j])
    else:
        envs.advance_right(j + 1, phi_sites[j + 1], cores[j + 1])


def half_sweep(head, envs, phi_sites, y, direction, opts, on_bond=None, shard=None):
    """Update every bond once, moving the label across the whole chain.

    Parameters
    ----------
    head : MPSHead
        Centre at site 0 for ``direction="right"``, at site ``N - 1`` for ``"left"``.
    envs : EnvironmentCache
    phi_sites : array, shape (N, n_samples, d)
    y : array, shape (n_samples, L)
    direction : {"right", "left"}
    opts : SweepOptions
    on_bond : callable, optional
        Called with a :class:`BondInfo` after every bond.
    shard : tnlearn.distributed.Shard, optional
        This rank's samples in a data-parallel run (``phi_sites``, ``y`` and
        ``envs`` then hold only them); None in one process.

    Returns
    -------
    list of BondInfo
    """
    n_sites = head.n_sites
    bonds = range(n_sites - 1) if direction == "right" else range(n_sites - 2, -1, -1)
    # Gram matrices of a half-block are reused from the previous visit while its environment
    # is unchanged; with per-sample scales (normalize_samples=False) a Gram also depends on
    # the other environment's norms, so they are recomputed every time
    gram_key = opts.solver.gram_samples
    reuse_grams = opts.normalize_samples
    infos = []
    for j in bonds:
        left, left_log = envs.get(j)
        right, right_log = envs.get(j + 2)
        problem = LocalProblem(
            left, left_log, phi_sites[j], phi_sites[j + 1], right, right_log,
            head.n_labels, head.backend, opts.chunk_size, opts.normalize_samples, shard,
            known_grams=envs.cached_grams(j, gram_key) if reuse_grams else None,
        )
        Bs = problem.to_scaled(head.merge(j), head.log_norm)
        Bs, _, grams = solve_local(problem, Bs, y, opts.solver, want_grams=opts.truncation == "data")
        if grams is not None and reuse_grams:
            envs.keep_grams(j, gram_key, grams)
        if opts.truncation != "data":
            grams = None
        tinfo = None
        if shard is None or shard.is_root:  # the split is small dense algebra on the host
            block, log_norm = problem.from_scaled(Bs)
            tinfo = head.split(j, block, log_norm, direction, opts.max_bond, opts.cutoff, opts.cutoff_mode, grams)
        if shard is not None:
            tinfo = broadcast_cores(shard, head, (j, j + 1), tinfo)
        advance_past_bond(envs, phi_sites, head.cores, j, direction)
        info = BondInfo(j, direction, tinfo.kept, tinfo.discarded_weight)
        infos.append(info)
        if on_bond is not None:
            on_bond(info)
    return infos


def full_sweep(head, envs, phi_sites, y, opts, on_bond=None, shard=None):
    """A right half-sweep then a left one (centre at site 0 before and after)."""
    infos = half_sweep(head, envs, phi_sites, y, "right", opts, on_bond, shard)
    infos += half_sweep(head, envs, phi_sites, y, "left", opts, on_bond, shard)
    return infos


def center_outputs(head, envs, phi_sites, chunk_size=4096, normalized=False):
    """Outputs of every training sample from the cached environments of the centre site.

    Parameters
    ----------
    head : MPSHead
    envs : EnvironmentCache
        Valid left environment at bond ``c`` and right environment at ``c + 1``.
    phi_sites : array, shape (N, n_samples, d)
    chunk_size : int
    normalized : bool
        Divide each sample's outputs by the norms of its environments at the
        centre (what ``normalize_samples`` training fits).

    Returns
    -------
    array, shape (n_samples, L), on the backend, float64
    """
    be = head.backend
    xp = be.xp
    c = head.center
    left, left_log = envs.get(c)
    right, right_log = envs.get(c + 1)
    core = head.cores[c]
    Dl, d, L, Dr = core.shape
    n = left.shape[0]
    out = xp.empty((n, L), dtype=np.float64)
    mat = core.reshape(Dl * d, L * Dr)
    for start in range(0, n, chunk_size):
        sl = slice(start, start + chunk_size)
        T = xp.matmul(be.row_outer(left[sl], phi_sites[c, sl]), mat)
        out[sl] = be.row_contract(T.reshape(-1, L, Dr), right[sl])
    if normalized:
        out *= np.exp(head.log_norm)
    else:
        out *= xp.exp(left_log + right_log + head.log_norm)[:, None]
    return out


def training_loss(f, y, loss, xp, shard=None):
    """Mean loss per sample of outputs ``f`` against one-hot ``y`` (over all ranks with a ``shard``)."""
    if shard is None:
        return float(loss_value(f, y.astype(np.float64), loss, xp)) / f.shape[0]
    return float(shard.sum(loss_value(f, y.astype(np.float64), loss, xp))) / shard.n_total
