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
from tnlearn.solvers import SolverOptions, local_objective, loss_value, solve_local
from tnlearn.stages.mps import block_matrix, matrix_to_block
from tnlearn.truncation import Truncation, truncated_row_basis


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
        Gram matrices from the normalised environments (reused between
        visits); see :class:`~tnlearn.local_problem.LocalProblem`.
    safeguard : bool
        Judge every bond update by the training objective of the network it
        leaves (after the split's truncation, see :func:`sweep`): one that
        raises it by more than ``check_rise`` is compared with not updating
        the block, and the better of the two is kept.
    check_rise : float
        Relative rise of a bond's objective below which an update is kept
        without comparing it with the old block: carrying the label index
        across a bond capped at ``max_bond`` costs that much even for the old
        block (in the defaults protocol the update was the better of the two
        at every such bond).
    """

    max_bond: int
    cutoff: float = 1e-10
    cutoff_mode: str = "rsum2"
    solver: SolverOptions = field(default_factory=SolverOptions)
    chunk_size: int = 4096
    truncation: str = "data"
    normalize_samples: bool = True
    safeguard: bool = True
    check_rise: float = 1e-3

    def bond_truncation(self, cutoff=None):
        """The :class:`~tnlearn.truncation.Truncation` of a split (``cutoff`` overrides the option's)."""
        return Truncation(self.max_bond, self.cutoff if cutoff is None else cutoff, self.cutoff_mode)


@dataclass
class BondInfo:
    """Result of one bond update: where, which way, what the split discarded, whether it was taken.

    Attributes
    ----------
    bond : int
    direction : {"right", "left"}
    kept : int
        The new bond dimension.
    discarded_weight : float
        What the split threw away (relative, in the split's metric).
    fraction : float
        1 when the solver's update was kept, 0 when the block was kept as it
        was (the update would have left a worse network, or was not finite).
    forced_rise : float
        How much the kept network's objective exceeds the one before the
        update (0 when it did not rise): what carrying the label across a
        capped bond cost even for the better of the two (see :func:`sweep`).
    objective_before, objective_after : float
        The bond's objective (summed over samples, in its own normalisation)
        of the network before the update and of the one it left.
    """

    bond: int
    direction: str
    kept: int
    discarded_weight: float
    fraction: float = 1.0
    forced_rise: float = 0.0
    objective_before: float = float("nan")
    objective_after: float = float("nan")


@dataclass
class SweepResult:
    """What a safeguarded sweep did.

    Attributes
    ----------
    infos : list of BondInfo
        One per bond update, in sweep order.
    outputs : array, shape (n, L)
        Outputs of the samples held here after the sweep, from the
        environments at the centre (normalised as the sweep's last bond
        normalises them; their argmax is the prediction).
    """

    infos: list
    outputs: object

    @property
    def objective(self):
        """The sweep's objective: the mean over its bond updates of the bond objective after each.

        Every bond lowers (or keeps) its own objective (``objective_after <=
        objective_before`` up to rounding and forced label moves); with
        per-sample normalisation by the bond's environments no single
        function of the network is shared by all bonds, so the sweep is
        summed up by this average (summed over samples).
        """
        return float(np.mean([i.objective_after for i in self.infos]))

    @property
    def n_rejected(self):
        """Bond updates that were undone (the old block kept)."""
        return sum(1 for i in self.infos if i.fraction < 1.0)

    @property
    def forced_rise(self):
        """Sum of the bonds' forced rises of the objective (see :attr:`BondInfo.forced_rise`)."""
        return float(sum(i.forced_rise for i in self.infos))


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


def bond_sequence(n_sites, direction):
    """The ``(bond, direction)`` visits of a half-sweep (``"right"`` / ``"left"``) or a full one (``"both"``)."""
    right = [(j, "right") for j in range(n_sites - 1)]
    left = [(j, "left") for j in range(n_sites - 2, -1, -1)]
    return {"right": right, "left": left, "both": right + left}[direction]


def objective_tolerance(value, dtype):
    """How much a recomputed objective may exceed ``value`` by rounding alone.

    Outputs are computed in the model's ``dtype`` (float32 by default) and
    summed in float64; a few ulps of the outputs' precision relative to the
    objective covers a recomputation of the same network from other
    environments.
    """
    return 16 * np.finfo(dtype).eps * abs(value) + np.finfo(np.float64).tiny


@dataclass
class _PendingUpdate:
    """A bond update whose effect is judged by the next pass over the samples.

    The next bond's first pass (or the closing pass of the sweep) computes
    the outputs of exactly the network this update left, so its objective
    comes for free; only a rejection costs passes.
    """

    j: int
    direction: str
    problem: LocalProblem
    start: object  # working block before the update (backend)
    delta: object  # the solver's update (backend)
    grams: object
    before: float  # objective before the update
    info: BondInfo = None
    settled: bool = False  # the old block replaced a rejected update: its objective is final


class _Sweeper:
    """State of one sweep: the head, its environments, the data and the pending update."""

    def __init__(self, head, envs, phi_sites, y, opts, shard, sample_log_offset):
        self.head, self.envs, self.phi_sites, self.y = head, envs, phi_sites, y
        self.opts, self.shard, self.offset = opts, shard, sample_log_offset
        self.dtype = phi_sites.dtype

    def problem(self, j):
        envs, opts = self.envs, self.opts
        left, left_log = envs.get(j)
        right, right_log = envs.get(j + 2)
        reuse = opts.normalize_samples
        return LocalProblem(
            left, left_log, self.phi_sites[j], self.phi_sites[j + 1], right, right_log,
            self.head.n_labels, self.head.backend, opts.chunk_size, opts.normalize_samples, self.shard,
            known_grams=envs.cached_grams(j, opts.solver.gram_samples) if reuse else None,
            sample_log_offset=self.offset,
        )

    def solve(self, j):
        """Local update at bond ``j``: ``(problem, start block, update, grams, objective now, outputs now)``.

        The objective and outputs are those of the network as it is, in bond
        ``j``'s normalisation (``problem.log_normaliser``).
        """
        opts = self.opts
        problem = self.problem(j)
        start = problem.to_scaled(self.head.merge(j), self.head.log_norm)
        new, f, grams = solve_local(problem, start, self.y, opts.solver, want_grams=opts.truncation == "data")
        value = local_objective(problem, f, start, self.y, opts.solver)  # 0-d, on the device: read later
        return problem, start, new - start, grams, value, f

    def objective(self, f, log_normaliser, target):
        """Summed loss of outputs ``f`` (normalised by ``exp(log_normaliser)``) in the normalisation ``target``.

        Bonds that normalise samples by their own environments fit differently
        normalised outputs of the same network: ``f * exp(log_normaliser -
        target)`` are the outputs the bond with normaliser ``target`` sees.
        A 0-d device array, without the penalty (:meth:`penalty` adds it on the host).
        """
        log_scale = None if log_normaliser is target else log_normaliser - target
        value = self.head.backend.loss_total(f, self.y, self.opts.solver.loss, log_scale)
        if self.shard is not None:
            value = self.shard.sum(value)
        return value

    def penalty(self):
        """The L2 penalty of the network as it is: ``alpha / 2 * exp(2 log_norm)`` (the centre has unit norm)."""
        if not self.opts.solver.alpha:
            return 0.0
        return 0.5 * self.opts.solver.alpha * float(np.exp(2.0 * self.head.log_norm))

    def read(self, *values):
        """Device scalars as host floats, in one transfer."""
        be = self.head.backend
        return [float(v) for v in be.asnumpy(be.xp.stack([v.astype(np.float64) for v in values]))]

    def apply(self, upd, fraction):
        """Split ``start + fraction * delta`` at the update's bond and move the environments; a BondInfo.

        A fraction of 0 keeps the old block exactly (a plain SVD at the old
        bond dimension).  A candidate with NaN or inf entries is not split: the
        old block is kept instead, and the fraction recorded as 0.
        """
        head, opts = self.head, self.opts
        xp = head.backend.xp
        j, direction = upd.j, upd.direction
        Bs = upd.start if fraction == 0 else upd.start + fraction * upd.delta
        if fraction != 0 and self.shard is not None:
            # every rank holds the same candidate (sums over samples are reduced): the same verdict
            if not np.isfinite(float(xp.sum(xp.abs(Bs)))):
                fraction, Bs = 0.0, upd.start
        tinfo = None
        if self.shard is None or self.shard.is_root:  # the split is small dense algebra on the host
            block, log_norm = upd.problem.from_scaled(Bs)
            if fraction != 0 and not (np.isfinite(log_norm) and np.all(np.isfinite(block))):
                fraction = 0.0
                block, log_norm = upd.problem.from_scaled(upd.start)
            if fraction == 0:
                tinfo = head.split(j, block, direction, opts.bond_truncation(cutoff=0.0), log_norm)
            else:
                grams = upd.grams if opts.truncation == "data" else None
                tinfo = head.split(j, block, direction, opts.bond_truncation(), log_norm, grams)
        if self.shard is not None:
            tinfo = broadcast_cores(self.shard, head, (j, j + 1), tinfo)
        advance_past_bond(self.envs, self.phi_sites, head.cores, j, direction)
        return BondInfo(j, direction, tinfo.kept, tinfo.discarded_weight, float(fraction))

    def accepts(self, upd, value):
        """Whether the network after ``upd`` (objective ``value``) may stay: not above ``upd.before`` beyond rounding."""
        if not self.opts.safeguard:
            return True
        return bool(value <= upd.before + objective_tolerance(upd.before, self.dtype))

    def judge(self, upd, value):
        """Settle ``upd`` given the objective ``value`` of the network it currently leaves.

        Returns True when that network stays.  An update that raised the
        objective by more than ``opts.check_rise`` is compared with the old
        block (both carried across the bond by the split, on the first
        ``line_search_samples`` samples); when the old block does better it
        replaces the update and False is returned: the caller recomputes the
        objective and calls again.
        """
        small = value <= upd.before + self.opts.check_rise * abs(upd.before)
        if upd.settled or self.accepts(upd, value) or upd.info.fraction == 0 or small or not self.old_block_is_better(upd):
            upd.info.forced_rise = max(0.0, value - upd.before)
            upd.info.objective_before, upd.info.objective_after = upd.before, value
            return True
        upd.info = self.apply(upd, 0.0)
        upd.settled = True
        return False

    def old_block_is_better(self, upd):
        """Whether the old block, split at ``max_bond``, fits better than the update the head now holds.

        Both are evaluated in the update's own problem (its environments are
        still in the cache when the next bond is solved) on the first
        ``line_search_samples`` training samples (all of them when None): two
        forward passes over a subsample and an SVD, paid only when an update
        raised the objective.
        """
        head, opts, problem = self.head, self.opts, upd.problem
        be = head.backend
        rows = opts.solver.line_search_samples
        now = problem.to_scaled(head.merge(upd.j), head.log_norm)
        block, log_norm = problem.from_scaled(upd.start)
        if not np.isfinite(log_norm):
            return False
        shape = block.shape
        old = matrix_to_block(rank_truncated(block_matrix(block, upd.direction), opts.max_bond), shape, upd.direction)
        old = problem.to_scaled(be.asarray(np.ascontiguousarray(old).astype(block.dtype)), log_norm)
        values = []
        for candidate in (now, old):
            f = problem.forward(candidate, rows=rows)  # this rank's samples inside the global prefix
            values.append(local_objective(problem, f, candidate, self.y[: f.shape[0]], opts.solver))
        new_value, old_value = self.read(*values)
        return bool(old_value < new_value)

    def centre_outputs(self):
        """``(outputs, log normaliser)`` of the network from the environments at its centre.

        The normaliser is the sweep's fixed offset (or 0), or with
        ``normalize_samples`` the norms of the environments at the centre
        site (the recorded loss's normalisation, that of ``predict_proba``).
        """
        head, opts, xp = self.head, self.opts, self.head.backend.xp
        c = head.center
        if opts.normalize_samples:
            log_normaliser = self.envs.get(c)[1] + self.envs.get(c + 1)[1]
        elif self.offset is not None:
            log_normaliser = self.offset
        else:
            log_normaliser = xp.zeros(self.phi_sites.shape[1], dtype=np.float64)
        f = center_outputs(head, self.envs, self.phi_sites, opts.chunk_size, log_normaliser=log_normaliser)
        return f, log_normaliser


def rank_truncated(matrix, max_bond):
    """The best rank-``max_bond`` approximation of ``matrix`` (host), from the eigenvectors of its smaller Gram.

    What a plain truncated-SVD split leaves of a block, without the SVD: the
    projection onto the leading left (or right) singular vectors, found by
    :func:`tnlearn.truncation.truncated_row_basis` of ``M`` (or ``M^T``), a
    ``min(m, n)``-square eigenproblem.

    Parameters
    ----------
    matrix : ndarray, shape (m, n)
    max_bond : int

    Returns
    -------
    ndarray, shape (m, n)
    """
    m, n = matrix.shape
    if max_bond >= min(m, n):
        return matrix
    a = matrix.astype(np.float64, copy=False)
    if m <= n:
        U, _, _ = truncated_row_basis(a, max_bond)
        return U @ (U.T @ a)
    V, _, _ = truncated_row_basis(a.T, max_bond)
    return (a @ V) @ V.T


def sweep(head, envs, phi_sites, y, opts, direction="both", on_bond=None, shard=None, sample_log_offset=None):
    """Update every bond once in each direction asked for; no update leaves a worse network than keeping the block.

    Each bond merges its two sites, takes the solver's update of the block
    (:func:`tnlearn.solvers.solve_local`), splits the block again (truncation
    included) and moves the environments on.  Bond ``j``'s objective ``J_j``
    is the loss of its outputs (normalised per sample by the bond's
    environments with ``opts.normalize_samples``, else by a fixed
    ``sample_log_offset`` or not at all) plus the L2 penalty.  The next pass
    over the samples computes the outputs of exactly the network the update
    left (the next bond's, or the closing pass at the centre), and rescaled
    to bond ``j``'s normalisation they give ``J_j`` after the update at no
    extra cost.  With ``opts.safeguard``:

    * an update whose result is not finite is undone (the old block kept);
    * an update that raised ``J_j`` by more than ``opts.check_rise`` is
      compared with carrying the old block across the bond (both truncated
      by the split, on the first ``line_search_samples`` samples) and the
      better is kept;
    * otherwise it is kept.  Its rise, if any, is what moving the label
      index across a bond capped at ``max_bond`` costs (the old block pays
      it too); with ``max_bond`` at least the data's rank no update raises
      its objective (``tests/test_safeguard.py``).

    Each :class:`BondInfo` records ``objective_before`` / ``objective_after``
    and the ``forced_rise``.

    Parameters
    ----------
    head : MPSHead
        Centre at site 0 for ``"right"`` and ``"both"``, at ``N - 1`` for ``"left"``.
    envs : EnvironmentCache
    phi_sites : array, shape (N, n_samples, d)
    y : array, shape (n_samples, L)
    opts : SweepOptions
    direction : {"both", "right", "left"}
    on_bond : callable, optional
        Called with each :class:`BondInfo` once its update is settled.
    shard : tnlearn.distributed.Shard, optional
        This rank's samples in a data-parallel run (``phi_sites``, ``y`` and
        ``envs`` then hold only them); None in one process.
    sample_log_offset : array, shape (n_samples,), optional
        Per-sample log normaliser of the fitted outputs (see
        :class:`~tnlearn.local_problem.LocalProblem`); None: raw outputs.

    Returns
    -------
    SweepResult
    """
    state = _Sweeper(head, envs, phi_sites, y, opts, shard, sample_log_offset)
    infos, pending = [], None

    def settle(upd):
        infos.append(upd.info)
        if on_bond is not None:
            on_bond(upd.info)

    def after_pending(f, log_normaliser, value=None):
        """The pending update's objective after it, and ``value`` (this bond's, before its update) read with it."""
        if value is not None and log_normaliser is pending.problem.log_normaliser:  # one normalisation
            v = state.read(value)[0]  # the penalty is in it
            return v, v
        after = state.objective(f, log_normaliser, pending.problem.log_normaliser)
        if value is None:
            return state.read(after)[0] + state.penalty(), None
        after, before = state.read(after, value)
        return after + state.penalty(), before

    for j, way in bond_sequence(head.n_sites, direction):
        while True:
            problem, start, delta, grams, value, f = state.solve(j)
            if pending is None:
                value = state.read(value)[0]
                break
            after, before = after_pending(f, problem.log_normaliser, value)
            if state.judge(pending, after):
                value = before
                break  # else the previous bond was re-split: the environments changed, solve bond j again
        if pending is not None:
            settle(pending)
        if grams is not None and opts.normalize_samples:
            envs.keep_grams(j, opts.solver.gram_samples, grams)
        pending = _PendingUpdate(j, way, problem, start, delta, grams, value)
        pending.info = state.apply(pending, 1.0)
    f, log_normaliser = state.centre_outputs()
    while pending is not None and not state.judge(pending, after_pending(f, log_normaliser)[0]):
        f, log_normaliser = state.centre_outputs()
    if pending is not None:
        settle(pending)
    return SweepResult(infos, f)


def half_sweep(head, envs, phi_sites, y, direction, opts, on_bond=None, shard=None, sample_log_offset=None):
    """Update every bond once, moving the label across the whole chain (:func:`sweep` in one direction).

    Returns
    -------
    list of BondInfo
    """
    return sweep(head, envs, phi_sites, y, opts, direction, on_bond, shard, sample_log_offset).infos


def full_sweep(head, envs, phi_sites, y, opts, on_bond=None, shard=None, sample_log_offset=None):
    """A right half-sweep then a left one (centre at site 0 before and after); see :func:`sweep`.

    Returns
    -------
    list of BondInfo
    """
    return sweep(head, envs, phi_sites, y, opts, "both", on_bond, shard, sample_log_offset).infos


def center_outputs(head, envs, phi_sites, chunk_size=4096, normalized=False, sample_log_offset=None,
                   log_normaliser=None):
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
        centre.
    sample_log_offset, log_normaliser : array, shape (n_samples,), optional
        Divide each sample's outputs by ``exp(...)`` instead (the fitted
        outputs of a sweep with that per-sample normaliser).

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

    def work(share):
        for sl in share:
            T = xp.matmul(be.row_outer(left[sl], phi_sites[c, sl]), mat)
            out[sl] = be.row_contract(T.reshape(-1, L, Dr), right[sl])

    be.map_chunks(work, n, chunk_size)
    if log_normaliser is None and sample_log_offset is not None:
        log_normaliser = sample_log_offset
    if normalized:
        out *= np.exp(head.log_norm)
    else:
        log_s = left_log + right_log + head.log_norm
        if log_normaliser is not None:
            log_s = log_s - log_normaliser
        out *= xp.exp(log_s)[:, None]
    return out


def training_loss(f, y, loss, xp, shard=None):
    """Mean loss per sample of outputs ``f`` against one-hot ``y`` (over all ranks with a ``shard``)."""
    if shard is None:
        return float(loss_value(f, y.astype(np.float64), loss, xp)) / f.shape[0]
    return float(shard.sum(loss_value(f, y.astype(np.float64), loss, xp))) / shard.n_total
