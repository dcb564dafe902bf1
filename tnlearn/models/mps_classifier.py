"""``MPSClassifier``: a scikit-learn estimator trained by two-site DMRG sweeps."""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np

from tnlearn.backend import get_backend, resolve_chunk_size
from tnlearn.distributed import broadcast_cores, check_same_data, get_comm, make_shard, shard_bounds
from tnlearn.embeddings import embed, get_feature_map
from tnlearn.history import History, SweepRecord
from numbers import Real

from sklearn.utils._param_validation import Interval, StrOptions

from tnlearn.models import _constraints as C
from tnlearn.models._base import TNClassifier, available_unless
from tnlearn.models._state import check_mps_cores
from tnlearn.models._training import (
    EarlyStopping, HeadSnapshot, divergence, validation_split, warn_diverged,
)
from tnlearn.models._validation import check_chunk_size, check_dtype
from tnlearn.interrupts import DeferredInterrupt
from tnlearn.local_problem import bond_row_bytes
from tnlearn.solvers import LOSSES, SOLVERS, SolverOptions, softmax
from tnlearn.stages.mps import MPSHead, init_cores, pca_init_cores
from tnlearn.sweeps import SweepOptions, build_environments, objective_tolerance, sweep
from tnlearn.truncation import CUTOFF_MODES, Truncation, check_truncation_args

_INITS = ("pca", "identity")
#: ``alpha="auto"`` at max_bond = 64; it scales with a block's parameter count, ``max_bond**2``.
AUTO_ALPHA = 3.0
#: below this many training samples ``alpha="auto"`` keeps its weight per sample (it grows as ``1 / n``)
AUTO_ALPHA_SAMPLES = 8000
#: ``loss="auto"`` takes cross-entropy when the training set has at least this many samples per
#: parameter of a merged two-site block (``max_bond**2 * d**2 * n_classes``), the squared loss below
AUTO_LOSS_SAMPLES_PER_PARAMETER = 0.5
#: ``n_iter="auto"``: local steps per bond for each loss (a preconditioned step solves the squared
#: loss's quadratic almost exactly; cross-entropy's curvature changes along the step)
AUTO_N_ITER = {"mse": 1, "cross_entropy": 3}
_TRUNCATIONS = ("data", "svd")


def _accuracy(hits, shard, n_total):
    """Fraction of true ``hits``; with a shard, over the hits of all ranks (``n_total`` samples)."""
    if shard is None:
        return float(np.mean(hits))
    return float(shard.comm.allreduce_sum(np.sum(hits, dtype=np.int64))) / n_total


class MPSClassifier(TNClassifier):
    """Matrix-product-state classifier (Stoudenmire & Schwab 2016) trained by DMRG sweeps.

    Each feature ``x_j`` (e.g. a pixel, in ``[0, 1]``) is embedded by a local
    feature map into ``phi(x_j)`` of dimension ``d``; the model is
    ``f^l(x) = W^l . phi(x_1) (x) ... (x) phi(x_N)`` with ``W`` an MPS whose label
    index ``l`` moves along the chain during a sweep.  Every sweep visits each
    bond twice (left to right and back): it merges the two neighbouring cores,
    updates the block from cached per-sample environments, and splits it by
    truncated SVD, which chooses the bond dimension.

    Parameters
    ----------
    max_bond : int, default=16
        Largest bond dimension ``m`` kept by the SVD splits.
    cutoff : float, default=1e-10
        SVD truncation threshold (see ``cutoff_mode``).
    cutoff_mode : {"rsum2", "rel", "abs"}, default="rsum2"
        ``"rsum2"`` discards singular values whose squared sum is at most
        ``cutoff`` of the total (the truncation error), as in quimb.
    truncation : {"data", "svd"}, default="data"
        How a merged block is split.  ``"svd"``: plain truncated SVD (the
        largest singular values of the block).  ``"data"``: the rank-``m``
        split that changes the outputs on the training data least (an SVD
        whitened by the data Gram matrices of the block's two halves, see
        :func:`tnlearn.truncation.metric_truncated_split`).
    n_sweeps : int, default=4
        Full sweeps (right and back) per call to :meth:`fit`.
    solver : {"gd", "cg"}, default="gd"
        Local update: gradient steps (the paper) or conjugate gradient on the
        local squared loss.
    n_iter : "auto" or int, default="auto"
        Gradient steps or CG iterations per bond.  ``"auto"``: 1 with the
        squared loss (a preconditioned step solves its quadratic almost
        exactly), 3 with cross-entropy (see ``loss``).
    step_size : "auto" or float, default="auto"
        ``"auto"`` takes the curvature-optimal step along the gradient (scale
        free); a float is the paper's fixed learning rate.
    loss : {"auto", "mse", "cross_entropy"}, default="auto"
        The training loss on the (normalised, see ``sample_norm``) outputs:
        the paper's squared distance to the one-hot label (``"mse"``) or the
        softmax cross-entropy (``"cross_entropy"``, which also gives
        :meth:`predict_proba`).  ``"auto"`` chooses by how well the data
        determine a bond's local problem: cross-entropy when the training set
        has at least one sample per two parameters of a merged two-site block,
        ``n_samples >= 0.5 * max_bond**2 * d**2 * n_classes`` (``d`` the
        feature map's dimension), the squared loss below; the choice is in
        :attr:`loss_function_`.  Chosen by the defaults protocol
        (``benchmarks/README.md``): cross-entropy with three steps per bond
        won every run of the protocol with at least one sample per parameter
        (Fashion-MNIST, 60,000 images, m = 20: 86.4% against 84.5%; 8,000
        images, m = 10: 78.8% against 77.6%; digits shifted to 12,123 images,
        m = 10: 96.4% against 94.0%, where the squared loss also lost 2.5
        points in a sweep), the squared loss won most runs with fewer than
        one sample per four parameters (digits, 1,347 images, m = 20: 97.6%
        against 96.7%; Fashion-MNIST, 8,000 images, m = 64: 84.8% against
        84.3%), and in between the two were within 0.5 points.
    feature_map : str, FeatureMap or callable, default="trig"
        See :mod:`tnlearn.embeddings`.
    dtype : {"float32", "float64"}, default="float32"
    sample_norm : bool, default=True
        Fit every block to the outputs of *per-sample normalised*
        environments, ``f(x) / (|L(x)| |R(x)|)``, instead of the raw ``f(x)``.
        The two differ by a positive factor per sample, so the predicted class
        is the same, but the raw outputs of an ``N``-site chain span many
        orders of magnitude across samples (how well the isometries capture
        each sample's product state compounds over the sites), and the raw
        loss ignores every poorly captured sample.  In the defaults protocol
        (``benchmarks/README.md``) it is worth several points: Fashion-MNIST
        (8,000 images, m = 20) 82.8% against 78.8% raw, digits at m = 6 92.7%
        against 70%.  The normaliser is the bond's own (see Notes).  ``False``
        gives the paper's raw squared loss.  ``decision_function`` and
        ``predict_proba`` use the outputs the network was trained on
        (normalised by the label site's environments when ``True``);
        :meth:`outputs` gives the raw ``f(x)`` (what quimb's contraction gives).
    init : {"pca", "identity"}, default="pca"
        ``"pca"`` builds the initial sites from the training data's principal
        subspaces (see :func:`tnlearn.stages.mps.pca_init_cores`), at bond
        dimension ``max_bond``; ``"identity"`` starts data-free from near-identity
        sites of bond dimension ``init_bond``, grown by the sweeps.
    init_bond : int, default=2
        Initial bond dimension for ``init="identity"``.
    line_search_samples : int or None, default=4096
        Samples used to estimate the step for ``step_size="auto"`` (None: all):
        the curvature along the search direction, a scalar, is well estimated
        from 4,096 random samples.  On Fashion-MNIST (60,000 images, m = 20,
        5 sweeps, ``gram_samples=16384``) test accuracy per sweep was 84.04 /
        84.95 / 85.36 / 85.21 / 85.16% against 84.02 / 84.84 / 85.00 / 85.09 /
        85.04% with 8,192 samples.
    precondition : bool, default=True
        Precondition every local step with the Kronecker-factored data Gram
        matrices of the block (see :mod:`tnlearn.solvers`): near-Newton steps
        for the price of a gradient step.  On 14x14 Fashion-MNIST (60,000
        images, m = 20, 3 sweeps) test accuracy 82.8% -> 84.8%; on digits
        (m = 16, 4 sweeps) 97.8% -> 98.0%.
    damping : float, default=0.3
        Relative damping of the preconditioner's Gram factors,
        ``G + damping * mean(eig(G)) * I``.  Small values (1e-3) trust the
        Kronecker approximation too far and destabilise the sweep; 0.1-0.3
        worked best on Fashion-MNIST.
    gram_samples : int or None, default=16384
        Estimate the block's data Gram matrices (for the preconditioner and
        the data-metric split) from the first ``gram_samples`` of the shuffled
        training samples (None: all of them).  A ``(m d) x (m d)`` Gram matrix
        is well estimated from 16,384 random samples; on Fashion-MNIST (60,000
        images, m = 20, 5 sweeps) test accuracy per sweep was 84.02 / 84.84 /
        85.00 / 85.09 / 85.04% against 83.84 / 84.85 / 84.76 / 84.94 / 85.05%
        with all samples, and a sweep costs ~5% less (the Gram products are
        thin, ``(c x 2m)^T (c x 2m)``, and run far below the machine's peak).
        Smaller training sets use all their samples.
    chunk_size : int or "auto", default="auto"
        Samples per matrix product at most (bounds temporary memory; with
        several host threads a pass's chunks are made equal, as many per
        thread, none larger). ``"auto"`` on
        numpy: the samples whose bond temporaries (``max_bond * (d**2 +
        n_classes)`` numbers each) fill twice one core's L2 cache, a power of
        two in [256, 8192] (1,024 at m = 20 with 10 classes and a 1 MiB cache,
        see :func:`tnlearn.backend.resolve_chunk_size`), and 4096 for
        prediction; the
        host's cores each take their own chunks (:mod:`tnlearn.host_threads`;
        ``OMP_NUM_THREADS=1`` runs them in order). On cupy: 65536 (fewer
        kernel launches per bond).
    backend : {"numpy", "cupy"}, default="numpy"
    distributed : {None, "mpi"}, default=None
        ``"mpi"``: data-parallel training over the ranks of
        ``MPI.COMM_WORLD`` when the script runs under ``mpiexec -n K`` /
        ``srun`` (needs ``pip install 'tnlearn[mpi]'``; a world of one rank
        is the serial path).  Every rank calls ``fit`` with the same data;
        each keeps a contiguous shard of the shuffled samples, and all end
        with the same model (see :mod:`tnlearn.distributed`).  ``fit(...,
        comm=...)`` takes an explicit communicator instead.
    alpha : "auto" or float, default="auto"
        L2 penalty ``alpha / 2 * |W|^2`` on the network, added to the summed
        training loss (scikit-learn's ``alpha``; ``W`` in the units of the
        normalised outputs, see ``sample_norm``).  Every local update minimises
        the penalised objective; the recorded ``loss`` includes it (and
        ``data_loss`` leaves it out).  ``"auto"``: ``3 (max_bond / 64)^2 *
        max(1, 8000 / n_samples)``, which grows with a block's parameter count
        (``~ max_bond^2``); on the summed loss its weight per sample shrinks as
        the training set grows beyond 8,000 samples and stays at that weight
        below.  Chosen by the defaults protocol (``benchmarks/README.md``): a
        block at m = 64 has more parameters than 8,000 images, and the
        preconditioned near-Newton steps fit them; Fashion-MNIST (8,000 images)
        at m = 64 went from 78.5% (``alpha=0``) to 84.8% (``alpha=3``); on 800
        samples of a synthetic problem the per-sample floor turned falling test
        accuracy (m = 20: 61.5 -> 57.8%) into 59.8 -> 61.8%.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (stratified),
        score it after every sweep, stop when the validation accuracy has not
        improved by more than ``tol`` for ``n_iter_no_change`` sweeps, and end
        with the network of the best sweep (as ``MLPClassifier`` does).
        ``n_sweeps`` is then the most sweeps run.
    validation_fraction : float, default=0.1
        Share of the training data held out when ``early_stopping``.
    n_iter_no_change : int, default=2
        Sweeps without improvement before early stopping ends the fit.
    tol : float, default=1e-4
        Smallest gain of validation accuracy that counts as an improvement.
    random_state : int, Generator or None, default=None
    warm_start : bool, default=False
        Continue from the fitted network instead of starting anew (the
        sample normalisers ``c_n`` are computed afresh from it).  On the
        samples of the fit it continues, the first sweep is guarded against
        that fit's last record; on other samples only against the new sweeps
        (``history_.meta["data_fingerprint"]``).
    verbose : int, default=0
        1 prints a line per sweep; 2 also shows a progress bar over bonds.

    Notes
    -----
    **What a sweep lowers, and the safeguards.**  Bond ``j``'s update fits
    its *local objective* ``J_j = sum_n loss(f(x_n) / rho_j(x_n), y_n) +
    alpha / 2 * |W|^2``, where ``rho_j(x_n)`` is the norm of the sample's
    projection onto the bond's variational space (the norms of its
    environments; 1 with ``sample_norm=False``).  Every update is judged by
    ``J_j`` of the network it leaves, after the split's truncation (free: the
    next bond's pass computes those outputs anyway, see
    :func:`tnlearn.sweeps.sweep`); an update that raised it by more than 0.1% is compared with
    carrying the old block across the bond, and the better of the two is
    kept, so the only rises left are what moving the label index across a
    bond capped at ``max_bond`` costs anyway; an update with NaN or inf is
    undone.  With bonds wide enough to carry the label (``max_bond`` at least
    the data's rank) no update raises its objective (a property test over
    every option combination).  The recorded per-sweep ``loss`` is the mean
    of ``J_j`` after the sweep's updates, per sample: the quantity the bonds
    lower, averaged (with ``sample_norm=False`` all ``J_j`` are the same
    function of the network, the raw training loss).  A sweep that raises
    it is undone and training stops: quietly when the rise is small (the
    sweeps have converged; ``history_.meta["stopped"]`` says so), with a
    :class:`~tnlearn.models._training.DivergenceWarning` naming what to try
    when the loss turned non-finite or rose by more than 10%.  A fit never
    ends with a network worse, by its own measure, than the previous sweep's.

    Attributes
    ----------
    mps_ : quimb.tensor.MatrixProductState
        The trained network (see :attr:`mps_`); site tags ``"I{i}"``, physical
        indices ``"k{i}"``, the label index ``"label"`` on the centre site.
    classes_ : ndarray, shape (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of str, shape (n_features_in_,)
        The column names, when ``fit`` was given a DataFrame with string
        column names; prediction then checks them.
    history_ : History
        One :class:`~tnlearn.history.SweepRecord` per sweep;
        ``history_.meta["loss"]`` / ``["n_iter"]`` are the loss and the
        steps per bond the fit used; ``["data_fingerprint"]`` a digest of
        the training samples and ``["data_first_record"]`` the index of the
        first record measured on them.
    loss_function_ : {"mse", "cross_entropy"}
        The loss the network was trained with (``loss``, or what ``"auto"``
        chose; kept by ``warm_start`` fits).
    head_ : MPSHead
        The network as the engine holds it (backend arrays).
    """

    saves_mid_sweep = True  # the network is consistent after every bond (the CLI saves it on Ctrl-C)

    _parameter_constraints = {
        **C.COMMON,
        "max_bond": C.POSITIVE_INT, "cutoff": C.NON_NEGATIVE, "cutoff_mode": [StrOptions(set(CUTOFF_MODES))],
        "truncation": [StrOptions(set(_TRUNCATIONS))], "n_sweeps": C.POSITIVE_INT, "solver": [StrOptions(set(SOLVERS))],
        "n_iter": [StrOptions({"auto"}), *C.POSITIVE_INT], "step_size": [StrOptions({"auto"}), *C.POSITIVE],
        "loss": [StrOptions({"auto", *LOSSES})],
        "feature_map": C.FEATURE_MAP, "sample_norm": ["boolean"], "init": [StrOptions(set(_INITS))],
        "init_bond": C.POSITIVE_INT, "line_search_samples": [*C.POSITIVE_INT, None], "precondition": ["boolean"],
        "damping": C.POSITIVE, "gram_samples": [*C.POSITIVE_INT, None], "chunk_size": C.CHUNK_SIZE,
        "distributed": [StrOptions({"mpi"}), None], "alpha": [StrOptions({"auto"}), *C.NON_NEGATIVE],
        "early_stopping": ["boolean"], "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": C.POSITIVE_INT, "tol": C.NON_NEGATIVE, "warm_start": ["boolean"],
    }

    def __init__(
        self,
        max_bond=16,
        cutoff=1e-10,
        cutoff_mode="rsum2",
        truncation="data",
        n_sweeps=4,
        solver="gd",
        n_iter="auto",
        step_size="auto",
        loss="auto",
        feature_map="trig",
        dtype="float32",
        sample_norm=True,
        init="pca",
        init_bond=2,
        line_search_samples=4096,
        precondition=True,
        damping=0.3,
        gram_samples=16384,
        chunk_size="auto",
        backend="numpy",
        distributed=None,
        alpha="auto",
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=2,
        tol=1e-4,
        random_state=None,
        warm_start=False,
        verbose=0,
    ):
        self.max_bond = max_bond
        self.cutoff = cutoff
        self.cutoff_mode = cutoff_mode
        self.truncation = truncation
        self.n_sweeps = n_sweeps
        self.solver = solver
        self.n_iter = n_iter
        self.step_size = step_size
        self.loss = loss
        self.feature_map = feature_map
        self.dtype = dtype
        self.sample_norm = sample_norm
        self.init = init
        self.init_bond = init_bond
        self.line_search_samples = line_search_samples
        self.precondition = precondition
        self.damping = damping
        self.gram_samples = gram_samples
        self.chunk_size = chunk_size
        self.backend = backend
        self.distributed = distributed
        self.alpha = alpha
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose

    # -- validation ---------------------------------------------------------------
    def _check_params(self):
        """The declared constraints (types, ranges, choices), then what they cannot say.

        Beyond ``_parameter_constraints``: booleans where a number is meant
        (``True`` passes scikit-learn's integer and real intervals), a finite
        ``alpha``, the solver/loss combination, the dtype and feature map names.
        """
        self._validate_hyperparameters()
        check_truncation_args(self.max_bond, self.cutoff, self.cutoff_mode)
        if self.solver == "cg" and self.loss == "cross_entropy":
            raise ValueError("solver='cg' minimises the squared loss: use loss='mse', or solver='gd'")
        check_dtype(self.dtype)
        if isinstance(self.gram_samples, bool):
            raise ValueError(f"gram_samples={self.gram_samples!r} must be None (all samples) or an integer >= 1")
        check_chunk_size(self.chunk_size)
        if self.alpha != "auto" and (isinstance(self.alpha, bool) or not np.isfinite(self.alpha)):
            raise ValueError(f"alpha={self.alpha!r} must be 'auto' or a finite number >= 0 (the L2 penalty; "
                             "0 disables it)")
        if isinstance(self.tol, bool):
            raise ValueError(f"tol={self.tol!r} must be a number >= 0 (the smallest validation gain that counts)")
        get_feature_map(self.feature_map)

    def _alpha(self, n_samples):
        """The L2 penalty in use: ``alpha``, or for ``"auto"`` ``3 (max_bond / 64)^2 max(1, 8000 / n_samples)``."""
        if self.alpha != "auto":
            return float(self.alpha)
        return AUTO_ALPHA * (self.max_bond / 64) ** 2 * max(1.0, AUTO_ALPHA_SAMPLES / n_samples)

    def _resolve_loss(self, n_samples, n_classes):
        """The loss to train with: ``loss``, or for ``"auto"`` cross-entropy when ``n_samples`` is at least
        :data:`AUTO_LOSS_SAMPLES_PER_PARAMETER` times a merged block's parameter count (``"mse"`` with
        ``solver="cg"``, which minimises the squared loss)."""
        if self.loss != "auto":
            return self.loss
        if self.solver == "cg":
            return "mse"
        d = get_feature_map(self.feature_map).dim
        block_params = self.max_bond**2 * d**2 * n_classes
        return "cross_entropy" if n_samples >= AUTO_LOSS_SAMPLES_PER_PARAMETER * block_params else "mse"

    def _n_iter(self, loss):
        """Local steps per bond: ``n_iter``, or for ``"auto"`` :data:`AUTO_N_ITER` of the loss."""
        return AUTO_N_ITER[loss] if self.n_iter == "auto" else int(self.n_iter)

    def _embed(self, X, backend, out_of_domain="raise"):
        Phi = embed(X, self.feature_map, dtype=np.dtype(self.dtype), out_of_domain=out_of_domain)
        return backend.asarray(np.ascontiguousarray(Phi.transpose(1, 0, 2)))

    # -- fitting ------------------------------------------------------------------
    def fit(self, X, y, eval_set=None, on_sweep=None, comm=None):
        """Train by DMRG sweeps.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            Features in the feature map's domain (``[0, 1]`` for ``"trig"``);
            values outside it are an error here, while at prediction time they
            are clipped into the domain with a ``DataDomainWarning``.
        y : array-like, shape (n_samples,)
            Class labels.
        eval_set : tuple (X_test, y_test), optional
            Scored after every sweep; its accuracy goes into ``history_``.
        on_sweep : callable, optional
            Called as ``on_sweep(self)`` after every completed sweep (the label
            is back on site 0 and ``history_`` has the new record), e.g. to
            write a checkpoint with :func:`tnlearn.io.save_model`.  A run
            interrupted later can continue from such a checkpoint with
            ``warm_start=True`` and reach the same weights as an uninterrupted
            run with the same ``random_state`` and data.  In a distributed
            run it is called on every rank (write files on ``comm.rank == 0``).
        comm : "mpi", mpi4py communicator or tnlearn.distributed communicator, optional
            Train data-parallel over this communicator's ranks (overrides
            ``distributed``).  Every rank passes the same ``X``, ``y`` and
            ``eval_set``; only rank 0 prints.

        Returns
        -------
        self
        """
        self._check_params()
        continuing = self.warm_start and hasattr(self, "head_")
        fitted_features, fitted_classes = getattr(self, "n_features_in_", None), getattr(self, "classes_", None)
        X, classes, y_idx = self._validate_Xy(X, y)
        if continuing:
            if X.shape[1] != fitted_features:
                raise ValueError(f"warm_start: X has {X.shape[1]} features, the model {fitted_features}")
            unknown = np.setdiff1d(classes, fitted_classes)
            if unknown.size:
                raise ValueError(f"warm_start: y has classes {unknown.tolist()} unseen in the first fit; "
                                 "refit with warm_start=False to learn a new set of classes")
            y_idx = np.searchsorted(fitted_classes, classes[y_idx])
            classes = fitted_classes
        eval_set = self._validate_eval_set(eval_set)
        rng = np.random.default_rng(self.random_state)
        backend = get_backend(self.backend)
        dtype = np.dtype(self.dtype)
        # "auto": a chunk's bond temporaries fill a core's cache
        row_bytes = bond_row_bytes(self.max_bond, get_feature_map(self.feature_map).dim, len(classes), dtype)
        chunk_size = resolve_chunk_size(self.chunk_size, backend, row_bytes=row_bytes)
        comm = get_comm(self.distributed if comm is None else comm)

        if comm.size > 1:
            check_same_data(comm, X, y)
        stopper = val_data = None
        if self.early_stopping:  # rank 0's split on every rank
            train_idx, val_idx = validation_split(len(X), y_idx, float(self.validation_fraction), rng)
            train_idx, val_idx = comm.bcast_arrays([train_idx, val_idx])
            val_data = (self._embed(X[val_idx], backend, "clip"), y_idx[val_idx])
            X, y_idx = X[train_idx], y_idx[train_idx]
            stopper = EarlyStopping(int(self.n_iter_no_change), float(self.tol))
        # shuffle once: the line search uses the first rows as a random subset
        order = rng.permutation(len(X))
        shard = None
        if comm.size > 1:  # every rank takes its contiguous part of rank 0's shuffled order
            order = comm.bcast_arrays([order])[0]
            shard = make_shard(comm, len(X), backend)
            order = order[shard.start : shard.stop]
        phi_sites = self._embed(X[order], backend)
        onehot = np.zeros((len(order), len(classes)), dtype=dtype)
        onehot[np.arange(len(order)), y_idx[order]] = 1
        Y = backend.asarray(onehot)

        if continuing:
            head = self.head_
            if head.center != 0:
                raise RuntimeError("warm_start needs the label on site 0 (a finished sweep)")
        elif self.init == "pca":
            with backend.host_threads():  # its passes over the samples share the host's cores too
                cores, log_norm = pca_init_cores(
                    phi_sites, len(classes), self.max_bond, rng, backend, chunk_size, shard=shard, targets=Y
                )
            head = MPSHead(cores, 0, log_norm, backend)
        else:
            fmap = get_feature_map(self.feature_map)
            cores, log_norm = init_cores(
                X.shape[1], fmap.dim, len(classes), min(self.init_bond, self.max_bond), rng, dtype
            )
            head = MPSHead(cores, 0, log_norm, backend)
        if shard is not None:  # one model on every rank, whatever each rank's generator drew
            broadcast_cores(shard, head, range(head.n_sites))
        if not continuing:
            self.classes_ = classes
            self.history_ = History()
        self._note_training_data(X, y_idx, continuing)
        if not (continuing and getattr(self, "loss_function_", None)):  # a continued fit keeps its loss
            self.loss_function_ = self._resolve_loss(len(X), len(classes))
        loss = self.loss_function_
        self.history_.meta.update(loss=loss, n_iter=self._n_iter(loss))
        if self.verbose and (shard is None or shard.is_root) and "auto" in (self.loss, self.n_iter):
            print(f"training with loss={loss!r}, {self._n_iter(loss)} step(s) per bond (loss={self.loss!r}, "
                  f"n_iter={self.n_iter!r}; {len(X)} samples, a merged block has "
                  f"{self.max_bond**2 * get_feature_map(self.feature_map).dim**2 * len(classes)} parameters)",
                  flush=True)
        self.head_ = head

        opts = SweepOptions(
            max_bond=self.max_bond,
            cutoff=self.cutoff,
            cutoff_mode=self.cutoff_mode,
            solver=SolverOptions(
                self.solver, loss, self._n_iter(loss), self.step_size, self.line_search_samples,
                bool(self.precondition), float(self.damping), self.gram_samples, alpha=self._alpha(len(X)),
            ),
            chunk_size=chunk_size,
            truncation=self.truncation,
            normalize_samples=bool(self.sample_norm),
        )
        # the passes over the samples share the host's cores; they run on the head's backend (a continued
        # fit's head keeps the one of the fit that made it)
        with head.backend.host_threads():
            self._train(head, phi_sites, opts, eval_set, shard, comm, backend, Y, y_idx[order], val_data, stopper,
                        on_sweep)
        return self

    def _train(self, head, phi_sites, opts, eval_set, shard, comm, backend, Y, y_train, val_data, stopper, on_sweep):
        """The sweeps of :meth:`fit`, from the environments of the initial network to the kept one."""
        envs = build_environments(head, phi_sites, opts)
        eval_data = None
        if eval_set is not None:
            X_eval, y_eval = eval_set
            if shard is not None:  # each rank scores a contiguous part of the test set
                start, stop = shard_bounds(len(X_eval), comm.size, comm.rank)
                X_eval, y_eval = X_eval[start:stop], y_eval[start:stop]
            eval_data = (self._embed(X_eval, backend, "clip"), y_eval, len(eval_set[1]))
        self.validation_scores_ = [] if stopper is not None else None

        def one_sweep():
            return self._run_one_sweep(head, envs, phi_sites, Y, y_train, opts, eval_data, backend, shard, val_data)

        def snapshot():
            return HeadSnapshot.of(head).restore_into(head)

        def early_stop(record):
            if stopper is None:
                return False
            self.validation_scores_.append(record.validation_accuracy)
            return stopper.update(record.validation_accuracy, head, record.sweep)

        self._sweep_loop(self.n_sweeps, one_sweep, snapshot, on_sweep, early_stop)
        if stopper is not None and stopper.best is not None:
            stopper.best.restore(head)
            self.best_validation_score_ = stopper.best_score
            self.best_sweep_ = stopper.best_sweep
            if stopper.best_sweep != len(self.history_):
                self.history_.meta["stopped"] = (
                    f"early stopping: the network of sweep {stopper.best_sweep} (best validation accuracy "
                    f"{stopper.best_score:.4f}) is kept; {len(self.history_)} sweeps were run"
                )

    def _run_one_sweep(self, head, envs, phi_sites, Y, y_idx, opts, eval_data, backend, shard=None,
                       val_data=None):
        """One safeguarded sweep and its record; None when it raised the loss (the caller rolls it back).

        The sweep is guarded against the last recorded one on the same samples (a continued fit on
        them too, as an uninterrupted fit would be; see ``TNClassifier._note_training_data``).
        """
        loss_before = self._last_loss()
        xp = backend.xp
        bar = None
        verbose = self.verbose if shard is None or shard.is_root else 0
        if verbose >= 2:
            from tqdm.auto import tqdm

            bar = tqdm(total=2 * (head.n_sites - 1), desc=f"sweep {len(self.history_) + 1}", leave=False)
        t0 = time.perf_counter()
        interrupt = DeferredInterrupt()

        def on_bond(_):
            if bar is not None:
                bar.update()
            if shard is not None:  # Ctrl-C on any rank stops all of them after the same bond
                interrupt.requested = shard.comm.any(interrupt.requested)
            interrupt.check()

        n_total = phi_sites.shape[1] if shard is None else shard.n_total
        number = len(self.history_) + 1
        try:
            with interrupt:
                result = sweep(head, envs, phi_sites, Y, opts, on_bond=on_bond, shard=shard)
        except FloatingPointError as exc:
            result = exc
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        if isinstance(result, FloatingPointError):
            warn_diverged(type(self).__name__, number, str(result))
            return None
        loss = result.objective / n_total
        reason = divergence(loss_before, loss)
        if reason is not None:
            warn_diverged(type(self).__name__, number, reason)
            return None
        if loss_before is not None and loss > loss_before + objective_tolerance(loss_before, phi_sites.dtype):
            # a small rise: what moving the label across capped bonds costs once the sweeps have
            # converged; the previous network is kept and training ends
            self.history_.meta["stopped"] = (
                f"sweep {number} would have raised the training loss from {loss_before:.6g} to {loss:.6g}; "
                f"kept the network of sweep {number - 1} (the sweeps cannot lower it further with these settings at "
                f"max_bond={self.max_bond})"
            )
            if verbose:
                print(f"sweep {number:3d}  loss {loss:.5f} > {loss_before:.5f}: converged, keeping sweep "
                      f"{number - 1}'s network", flush=True)
            return None
        f = result.outputs
        n_train = None if shard is None else shard.n_total
        train_acc = _accuracy(backend.asnumpy(xp.argmax(f, axis=1)) == y_idx, shard, n_train)
        hint = " (try loss='cross_entropy' or a larger max_bond)" if self.loss_function_ == "mse" else ""
        if self._lost_accuracy(number, train_acc, hint):
            if verbose:
                print(f"sweep {number:3d}  {self.history_.meta['stopped']}", flush=True)
            return None
        test_acc = val_acc = None
        if eval_data is not None:
            scores = head.decision_function(eval_data[0], opts.chunk_size)
            test_acc = _accuracy(self.classes_[np.argmax(scores, axis=1)] == eval_data[1], shard, eval_data[2])
        if val_data is not None:  # every rank holds the whole validation set: the same score everywhere
            val_acc = float(np.mean(np.argmax(head.decision_function(val_data[0], opts.chunk_size), axis=1)
                                    == val_data[1]))
        infos = result.infos
        errors = [i.discarded_weight for i in infos]
        record = SweepRecord.from_splits(
            number, loss, train_acc, test_acc, errors, head.bond_dims, seconds,
            validation_accuracy=val_acc, rejected_updates=result.n_rejected,
            data_loss=loss - (0.5 * opts.solver.alpha * float(np.exp(2 * head.log_norm)) / n_total),
        )
        self.history_.append(record)
        if verbose:
            print(f"{record.headline()}  max bond {max(record.bond_dims)}  "
                  f"max trunc err {record.max_truncation_error:.2e}  {seconds:.2f} s", flush=True)
        return record

    # -- prediction ---------------------------------------------------------------
    def _scores(self, X):
        """The outputs the network was trained on: normalised (``sample_norm``) or raw, (n, L) float64."""
        return self._outputs(X, normalized=bool(self.sample_norm))

    def _outputs(self, X, normalized):
        backend = self.head_.backend
        phi = self._embed(X, backend, "clip")
        chunk_size = resolve_chunk_size(self.chunk_size, backend)
        with backend.host_threads() if len(X) > chunk_size else nullcontext():  # chunks shared by the cores
            return self.head_.decision_function(phi, chunk_size, normalized=normalized)

    def outputs(self, X, normalized=False):
        """The network's outputs ``f^l(x)`` for every label value ``l``.

        ``normalized=False`` gives exactly what quimb's contraction of
        :attr:`mps_` with the sample's product state gives (``(clf.mps_ &
        product_state(embed(x))) ^ all``).  The raw outputs of a long chain
        span many orders of magnitude across samples and can overflow float64
        (e.g. 400 unscaled features with ``feature_map="linear"``);
        ``normalized=True`` divides each sample's outputs by the norms of its
        environments at the label site (the outputs ``sample_norm`` training
        fits; same argmax; always finite).  :meth:`decision_function` gives
        the outputs the network was trained on.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
        normalized : bool, default=False

        Returns
        -------
        ndarray, shape (n_samples, n_classes), float64
        """
        self._check_fitted()
        return self._outputs(self._validate_X(X, reset=False), normalized)

    def _why_no_probabilities(self):
        """None when :meth:`predict_proba` is available, else the reason and the fix."""
        fix = "Fit with loss='cross_entropy' for probabilities, or use decision_function"
        resolved = getattr(self, "loss_function_", None)
        if resolved is None:
            if self.loss == "mse":
                return (f"predict_proba: loss='mse' (the squared loss) gives no probabilities: its outputs are not "
                        f"log-probabilities. {fix}")
            if self.loss == "auto" and hasattr(self, "head_"):  # a network from quimb, never fitted
                return (f"predict_proba: this network was not trained here (loss='auto' has chosen no loss), so its "
                        f"outputs are not log-probabilities. {fix}")
            return None  # "cross_entropy", or "auto" decided by the fit: predict_proba checks it is fitted
        if resolved == "cross_entropy":
            return None
        if self.loss == "auto":
            return ("predict_proba: this model was trained with the squared loss (loss='auto' takes cross-entropy from "
                    "one training sample per two parameters of a bond's block, max_bond**2 * d**2 * n_classes); its "
                    f"outputs are not log-probabilities. {fix}")
        return (f"predict_proba: this model was trained with the squared loss (loss={self.loss!r}); its outputs are "
                f"not log-probabilities. {fix}")

    @available_unless(_why_no_probabilities)
    def predict_proba(self, X):
        """Softmax of the outputs, shape (n_samples, n_classes).

        Only for models trained with cross-entropy (``loss="cross_entropy"``, or
        ``"auto"`` where :attr:`loss_function_` is ``"cross_entropy"``): the
        squared loss's outputs are not log-probabilities.
        """
        self._check_fitted()
        return softmax(self._scores(self._validate_X(X, reset=False)), np)

    @property
    def mps_(self):
        """The trained network as a quimb ``MatrixProductState`` (a fresh host copy)."""
        self._check_fitted()
        from tnlearn.networks import head_to_quimb

        return head_to_quimb(self.head_)

    # -- model files ----------------------------------------------------------------
    @property
    def size_label(self):
        """``"m=<max_bond>"``: the model's size in plots and logs."""
        return f"m={self.max_bond}"

    def _get_state(self):
        """The network: ``core_0 ..`` (``(Dl, d, Dr)``, ``(Dl, d, L, Dr)`` on the label site) and its placement."""
        from tnlearn.networks import BOND_IND_ID, LABEL_IND, SITE_IND_ID, SITE_TAG_ID

        head = self.head_
        header = {
            "n_sites": head.n_sites, "center": head.center, "log_norm": head.log_norm,
            "index_names": {"site_ind_id": SITE_IND_ID, "site_tag_id": SITE_TAG_ID, "bond_ind_id": BOND_IND_ID,
                            "label": LABEL_IND},
        }
        if getattr(self, "loss_function_", None):
            header["loss_function"] = self.loss_function_
        return header, {f"core_{i}": head.backend.asnumpy(core) for i, core in enumerate(head.cores)}

    def _set_state(self, header, arrays, backend):
        from tnlearn.models._state import header_float, header_int

        self._check_params()
        n_sites, center = header_int(header, "n_sites"), header_int(header, "center")
        log_norm = header_float(header, "log_norm")
        loss = header.get("loss_function")
        if loss is not None and loss not in LOSSES:
            raise ValueError(f"the file's loss_function {loss!r} is not one of {sorted(LOSSES)}: not a tnlearn model file")
        cores = [arrays[f"core_{i}"] for i in range(n_sites)]
        check_mps_cores(cores, center, log_norm, self.n_features_in_, get_feature_map(self.feature_map).dim,
                        len(self.classes_))
        self.head_ = MPSHead(cores, center, log_norm, backend)
        if loss is not None:
            self.loss_function_ = loss

    @classmethod
    def from_quimb(cls, mps, classes=None, label_ind="label", **params):
        """A classifier whose network is an existing quimb MPS.

        The label may sit on any site; it is moved to site 0 by exact
        (untruncated) SVD moves, and the chain is brought to the mixed
        canonical form the engine keeps, so the result predicts exactly what
        the quimb network computes and can be trained further with
        ``warm_start=True``.

        Parameters
        ----------
        mps : quimb.tensor.MatrixProductState
            Open boundaries, site tags / physical indices as ``mps.site_tag``
            / ``mps.site_ind`` give them, exactly one site carrying ``label_ind``.
        classes : array-like, shape (L,), optional
            The class of each value of the label index (default ``0 .. L-1``).
        label_ind : str
        **params
            Hyperparameters (e.g. ``feature_map``, ``max_bond``); the feature
            map's dimension must equal the physical dimension of the sites.
            ``max_bond`` defaults to the larger of 16 and the network's widest
            bond (after exact zeros are dropped).

        Raises
        ------
        ValueError
            For a periodic MPS, complex entries, a label index on no site or
            on several, a physical dimension the feature map does not give, or
            a bond wider than an explicit ``max_bond``.

        Returns
        -------
        MPSClassifier
            Fitted: ``classes_``, ``n_features_in_``, ``head_`` and an empty
            ``history_``.
        """
        from tnlearn.networks import canonicalize_around, quimb_to_cores

        model = cls(**params)
        model._check_params()
        cores, center, log_scale = quimb_to_cores(mps, label_ind)
        d = cores[0].shape[1]
        dim = get_feature_map(model.feature_map).dim
        if d != dim:
            raise ValueError(f"the MPS has physical dimension {d} but feature_map={model.feature_map!r} gives "
                             f"vectors of dimension {dim}; pass a feature map of dimension {d}")
        n_labels = cores[center].shape[2]
        classes = np.arange(n_labels) if classes is None else np.asarray(classes)
        if classes.shape != (n_labels,) or len(np.unique(classes)) != n_labels:
            raise ValueError(f"classes must list {n_labels} distinct labels (the label index's size), got {classes!r}")
        dtype = np.dtype(model.dtype)
        cores, log_norm = canonicalize_around([np.asarray(c, dtype=np.float64) for c in cores], center)
        head = MPSHead(cores, center, log_norm + log_scale, get_backend("numpy"))
        for j in range(center - 1, -1, -1):  # move the label to site 0, exactly (zero singular values dropped)
            head.split(j, head.merge(j), "left", Truncation(None, 1e-14, "rel"))
        widest = max(head.bond_dims)
        if "max_bond" not in params:
            model.max_bond = max(model.max_bond, widest)
        elif widest > model.max_bond:
            raise ValueError(f"the MPS has a bond of dimension {widest} > max_bond={model.max_bond}: pass "
                             f"max_bond >= {widest} (or compress the MPS first, e.g. mps.compress(max_bond=...))")
        backend = get_backend(model.backend)
        model.head_ = MPSHead([c.astype(dtype) for c in head.cores], 0, head.log_norm, backend)
        model.classes_ = classes
        model.n_features_in_ = len(cores)
        model.history_ = History()
        return model
