"""TT-net: a tensor-train dense layer, a ReLU and a dense output layer (Novikov et al. 2015).

::

    x (flattened, zero-padded to prod(in_shape), centred)
      -> pre = x @ W_tt + b1        W_tt a TTMatrix, shape (prod in_shape, prod hidden_shape)
      -> h   = relu(pre)
      -> f   = h @ V + b2           dense, shape (prod hidden_shape, n_classes)
      -> softmax cross-entropy

Trained by two-site sweeps over the TT cores: at every bond the two cores are
merged, the merged block (with ``V``, ``b1``, ``b2``) is optimised by minibatch
Adam — the block's gradient is the upstream gradient back-propagated through
the output layer and the ReLU, then contracted with the input and the other
cores (the block's environments) — and the block is split by truncated SVD
(``max_rank``, ``cutoff``), so the TT-ranks adapt and every split's discarded
weight is recorded.

Every bond update is safeguarded: the training objective over all samples is
evaluated after the split and the update is undone (and the Adam step halved
for the rest of the fit) when it rose, so a sweep never raises the recorded
training loss (the mean cross-entropy).  With ``rank_prior="ard"`` the ranks
are learned (Hawkins & Zhang, :mod:`tnlearn.ard`): every sweep but the last
adds the prior's penalty to each bond's objective and cuts the slices it
rejects, which may raise the cross-entropy a little (fit traded for rank; only
a doubling is treated as divergence); the last sweep fine-tunes the learned
ranks on the data alone.
"""

from __future__ import annotations

import math
import time

from numbers import Real

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from tnlearn import ard
from tnlearn.backend import get_backend
from tnlearn.history import History, SweepRecord
from tnlearn.models import _constraints as C
from tnlearn.models._base import TNClassifier
from tnlearn.models._state import check_finite_floats, header_float, header_int
from tnlearn.models._adam import Adam, minibatch_adam, steps_per_bond
from tnlearn.models._training import DIVERGENCE_RISE, divergence, warn_diverged
from tnlearn.models._validation import check_dtype, check_positive_float, check_positive_int
from tnlearn.solvers import softmax
from tnlearn.stages.tt import TTMatrix, check_tt_shapes, factorize, tt_from_dense
from tnlearn.sweeps import bond_sequence, training_loss
from tnlearn.truncation import Truncation, check_truncation_args


def _largest_at_the_ends(factors):
    """The factors reordered largest first at alternate ends: ``(8, 8, 4, 4, 4) -> (8, 4, 4, 4, 8)``.

    A TT's rank is 1 at its two ends, so the end cores are the most constrained;
    giving them the larger output factors measured 88.2% against 87.8% on
    Fashion-MNIST 60,000 at rank 4 (``benchmarks/bench_tt.py``, ``hidden-ends``).
    """
    ordered = sorted(factors, reverse=True)
    out = [0] * len(ordered)
    left, right = 0, len(ordered) - 1
    for i, f in enumerate(ordered):
        if i % 2 == 0:
            out[left], left = f, left + 1
        else:
            out[right], right = f, right - 1
    return tuple(out)


def _split_factors(n, k):
    """``n`` as ``k`` integer factors (prime factors dealt largest first onto the smallest factor)."""
    primes, m, p = [], n, 2
    while m > 1 and p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    factors = [1] * k
    for q in sorted(primes, reverse=True):
        factors[factors.index(min(factors))] *= q
    return tuple(sorted(factors, reverse=True))


def _dense_layers(init_from, n_features, classes):
    """``(W1, b1, W2, b2)`` (float64) of a one-hidden-layer ReLU network, checked against the data."""
    if hasattr(init_from, "coefs_"):  # a fitted MLPClassifier
        name = type(init_from).__name__
        if not hasattr(init_from, "classes_"):
            raise ValueError(f"init_from: {name} is not a classifier; pass a fitted MLPClassifier (or the layers "
                             "(W1, b1, W2, b2) of a softmax classifier)")
        if len(init_from.coefs_) != 2:
            raise ValueError(f"init_from: the {name} has {len(init_from.coefs_) - 1} hidden layers; a TT-net "
                             "replaces exactly one (hidden_layer_sizes=(H,))")
        if getattr(init_from, "activation", "relu") != "relu":
            raise ValueError(f"init_from: the {name} uses activation={init_from.activation!r}; the TT-net's hidden "
                             "layer is a ReLU (train it with activation='relu')")
        if getattr(init_from, "out_activation_", "softmax") != "softmax":
            raise ValueError(f"init_from: the {name} has a {init_from.out_activation_!r} output (two classes); "
                             "a TT-net starts from a softmax output layer, i.e. >= 3 classes")
        mlp_classes = init_from.classes_  # there: a model without it was refused above
        if not np.array_equal(np.asarray(mlp_classes), classes):
            raise ValueError(f"init_from: the {name} was trained on classes {[str(c) for c in mlp_classes]} "
                             f"but y has {[str(c) for c in classes]}; fit it on the same labels as this model")
        layers = (init_from.coefs_[0], init_from.intercepts_[0], init_from.coefs_[1], init_from.intercepts_[1])
    else:
        try:
            layers = () if isinstance(init_from, str) else tuple(init_from)  # a string is not four layers
        except TypeError:
            layers = ()
        if len(layers) != 4:
            if hasattr(init_from, "hidden_layer_sizes"):  # an estimator before fit
                got = f"an unfitted {type(init_from).__name__} (call its fit first)"
            elif layers:
                got = f"a {type(init_from).__name__} of {len(layers)} items"
            else:
                got = f"{type(init_from).__name__} {init_from!r:.40}"
            raise ValueError(f"init_from must be a fitted MLPClassifier or a tuple (W1, b1, W2, b2); got {got}")
    W1, b1, W2, b2 = (np.asarray(a, dtype=np.float64) for a in layers)
    H, L = W1.shape[1] if W1.ndim == 2 else -1, len(classes)
    if W1.shape != (n_features, H) or b1.shape != (H,) or W2.shape != (H, L) or b2.shape != (L,):
        raise ValueError(
            f"init_from: layers of shapes W1 {W1.shape}, b1 {b1.shape}, W2 {W2.shape}, b2 {b2.shape} do not fit "
            f"{n_features} features and {L} classes; expected ({n_features}, H), (H,), (H, {L}), ({L},)"
        )
    for name, a in zip(("W1", "b1", "W2", "b2"), (W1, b1, W2, b2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"init_from: {name} contains NaN or inf")
    return W1, b1, W2, b2


#: Relative rise of the training cross-entropy that counts as divergence in a sweep with the ARD prior,
#: which may raise the fit on purpose when it cuts slices (the bond steps lower the penalised objective).
ARD_RISE = 1.0
#: The default hidden layer has this many times the (padded) inputs, and at least MIN_HIDDEN units: a wide
#: hidden layer costs the TT layer few parameters (Fashion-MNIST, rank 4: 1024 hidden units 86.9%, 4096 88.6%).
HIDDEN_FACTOR = 4
MIN_HIDDEN = 256


class TTNetClassifier(TNClassifier):
    """A TT dense layer, ReLU, dense output; trained by DMRG-style sweeps over the TT cores.

    Parameters
    ----------
    n_cores : int, default=5
        Number of TT cores when ``in_shape`` / ``hidden_shape`` are not given;
        the input is zero-padded to the next power of two that splits into
        ``n_cores`` factors (784 -> 1024 = 4^5).
    in_shape, hidden_shape : tuple of int, optional
        Factorisations of the (padded) input and of the hidden layer;
        default: :func:`~tnlearn.stages.tt.factorize` of the input size, and
        for the hidden layer that of ``max(4 * padded input size, 256)``,
        its larger factors at the two ends (28x28 images: 1024 -> 4096 =
        8 x 4 x 4 x 4 x 8 hidden units; the 8x8 digits: 64 -> 256).
        A wide hidden layer costs the TT layer few parameters and is worth
        1.7 points on Fashion-MNIST at rank 4 (``benchmarks/bench_tt.py``).
    max_rank : int, default=4
        Maximum TT-rank (the ``max_bond`` of every split); with
        ``rank_prior="ard"`` the starting (and largest) rank: pass a generous
        one, e.g. ``max_rank=16`` (``tnlearn train --tt-rank auto`` starts
        from ``--tt-max-rank``, 8 by default).
    cutoff : float, default=0.0
        Relative discarded weight allowed at each split (``cutoff_mode="rsum2"``).
    rank_prior : {None, "ard"}, default=None
        ``"ard"``: automatic rank determination after Hawkins & Zhang
        (arXiv 2010.08689): a Gaussian prior whose variance is shared by each
        rank slice of a bond, re-estimated at every split, penalises the
        merged block's slices (weighted L2 on the local problem) and slices
        whose standard deviation falls below ``rank_tol`` times the bond's
        largest are removed.  Ranks only shrink (a removed slice has infinite
        precision and does not come back); with ``n_sweeps >= 2`` the last
        sweep fine-tunes the learned ranks without the prior.  The maths is in :mod:`tnlearn.ard`.
    rank_tol : float, default=1e-2
        Relative slice standard deviation below which ``rank_prior="ard"``
        removes a slice.
    n_sweeps : int, default=4
        Full sweeps (right then left over the ``n_cores - 1`` bonds).
    epochs_per_bond : float or "auto", default="auto"
        Passes of minibatch Adam over the training set at every bond.
        ``"auto"``: half an epoch, but at least 100 Adam steps
        (``max(0.5, 100 * batch_size / n_samples)``), so a small data set
        (1,347 digits: 11 minibatches an epoch) is not left underfitted.
    batch_size : int, default=128
    learning_rate : float, default=2e-3
    lr_decay : float, default=1.0
        The Adam step of sweep ``k`` (1-based) is ``learning_rate * lr_decay**(k - 1)``.
    dtype : {"float32", "float64"}
    backend : str, default="numpy"
    random_state : int, Generator or None
    verbose : int
        1: a line per sweep; 2: also a progress bar over bonds.

    Attributes
    ----------
    tt_ : TTMatrix
        The trained TT layer (``tt_.to_quimb()`` is its quimb ``MatrixProductOperator``).
    b1_, V_, b2_ : ndarray
        Hidden bias ``(H,)``, output weights ``(H, L)``, output bias ``(L,)``.
    classes_ : ndarray
    history_ : History
        ``bond_dims`` (and ``tt_ranks``) are the TT-ranks after each sweep;
        ``compression`` and ``n_params`` describe the TT layer then.
    rank_variances_ : list of ndarray or None
        With ``rank_prior="ard"``: the estimated prior variance of every kept
        rank slice, per bond (None for a bond not yet split); training state,
        not saved with the model.

    References
    ----------
    Novikov, Podoprikhin, Osokin & Vetrov, "Tensorizing Neural Networks", NeurIPS 2015.
    Hawkins & Zhang, "Bayesian tensorized neural networks with automatic rank selection",
    arXiv 1905.10478; Hawkins, Liu & Zhang, "Towards compact neural networks via end-to-end
    training: a Bayesian tensor approach with automatic rank determination", arXiv 2010.08689.
    """

    def __init__(
        self,
        n_cores=5,
        in_shape=None,
        hidden_shape=None,
        max_rank=4,
        cutoff=0.0,
        rank_prior=None,
        rank_tol=1e-2,
        n_sweeps=4,
        epochs_per_bond="auto",
        batch_size=128,
        learning_rate=2e-3,
        lr_decay=1.0,
        dtype="float32",
        backend="numpy",
        random_state=None,
        verbose=0,
    ):
        self.n_cores = n_cores
        self.in_shape = in_shape
        self.hidden_shape = hidden_shape
        self.max_rank = max_rank
        self.cutoff = cutoff
        self.rank_prior = rank_prior
        self.rank_tol = rank_tol
        self.n_sweeps = n_sweeps
        self.epochs_per_bond = epochs_per_bond
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.lr_decay = lr_decay
        self.dtype = dtype
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose

    # -- set-up --------------------------------------------------------------------------
    _parameter_constraints = {
        **C.COMMON,
        "n_cores": C.POSITIVE_INT, "in_shape": [tuple, list, None], "hidden_shape": [tuple, list, None],
        "max_rank": C.POSITIVE_INT, "cutoff": C.NON_NEGATIVE, "rank_prior": [StrOptions({"ard"}), None],
        "rank_tol": [Interval(Real, 0, 1, closed="neither")], "n_sweeps": C.POSITIVE_INT,
        "epochs_per_bond": [StrOptions({"auto"}), *C.POSITIVE], "batch_size": C.POSITIVE_INT, "learning_rate": C.POSITIVE, "lr_decay": C.POSITIVE,
    }

    def _check_params(self):
        self._validate_hyperparameters()
        check_truncation_args(self.max_rank, self.cutoff, "rsum2")
        for name in ("n_cores", "n_sweeps", "batch_size"):
            check_positive_int(name, getattr(self, name))
        if self.n_cores < 2 and self.in_shape is None:
            raise ValueError(f"n_cores={self.n_cores}: a sweep needs at least 2 TT cores")
        if self.epochs_per_bond != "auto":
            check_positive_float("epochs_per_bond", self.epochs_per_bond, "1.0")
        check_positive_float("learning_rate", self.learning_rate, "2e-3")
        check_positive_float("lr_decay", self.lr_decay, "0.5")
        check_dtype(self.dtype)

    def _shapes(self, n_features, n_hidden=None):
        """``(in_shape, hidden_shape)``; ``n_hidden``: the width a dense network to compress fixes."""
        in_shape = self.in_shape if self.in_shape is not None else factorize(n_features, self.n_cores)
        hidden = self.hidden_shape
        if hidden is None:
            width = max(HIDDEN_FACTOR * math.prod(in_shape), MIN_HIDDEN) if n_hidden is None else n_hidden
            hidden = _largest_at_the_ends(factorize(width, len(in_shape)))
        if n_hidden is not None and math.prod(hidden) != n_hidden:
            given = "" if self.hidden_shape is None else f" but hidden_shape={tuple(hidden)} holds {math.prod(hidden)}"
            raise ValueError(
                f"the dense hidden layer has {n_hidden} units{given}: pass hidden_shape with {len(in_shape)} factors "
                f"whose product is {n_hidden}, e.g. hidden_shape={_split_factors(n_hidden, len(in_shape))}"
            )
        if self.hidden_shape is not None and len(tuple(hidden)) != len(tuple(in_shape)):
            raise ValueError(
                f"hidden_shape={tuple(hidden)} has {len(tuple(hidden))} factors but the input is factorised "
                f"into {len(tuple(in_shape))} ({tuple(in_shape)}): one factor per TT core on both sides"
            )
        in_shape, hidden = check_tt_shapes(in_shape, hidden)
        if len(in_shape) < 2:
            raise ValueError(f"in_shape={in_shape}: a sweep needs at least 2 TT cores")
        if math.prod(in_shape) < n_features:
            raise ValueError(
                f"in_shape={in_shape} holds {math.prod(in_shape)} features but X has {n_features}; "
                f"use factors whose product is >= {n_features} (the input is zero-padded)"
            )
        return in_shape, hidden

    def _prepare(self, X, xp, dtype=None):
        """Centre, scale and zero-pad a batch of raw features to ``(n, prod(in_shape))``."""
        dtype = self.tt_.dtype if dtype is None else dtype  # the fitted dtype, whatever set_params did since
        Xc = (np.asarray(X, dtype=np.float64) - self.input_mean_) / self.input_scale_
        out = np.zeros((len(X), self.tt_.in_features), dtype=dtype)
        out[:, : Xc.shape[1]] = Xc
        return self._backend.asarray(out)

    # -- the network -----------------------------------------------------------------------
    def _logits(self, Xp, block=None, bond=None, params=None, tt=None):
        """``(pre-activation, hidden, logits)`` of a batch; ``block`` replaces the cores of ``bond``.

        ``params`` (``b1, V, b2``) and ``tt`` default to the fitted layers.
        """
        b1, V, b2 = params if params is not None else (self.b1_, self.V_, self.b2_)
        tt = self.tt_ if tt is None else tt
        pre = (tt.forward(Xp) if block is None else tt.block_forward(bond, block, Xp)) + b1
        h = self._backend.xp.maximum(pre, 0)  # ReLU
        return pre, h, h @ V + b2

    def _batch_gradients(self, Xb, yb, block, bond, params):
        """Loss and gradients of the mean cross-entropy of one minibatch."""
        xp = self._backend.xp
        b1, V, b2 = params
        pre, h, f = self._logits(Xb, block, bond, params)
        p = softmax(f, xp)
        p[xp.arange(len(yb)), yb] -= 1
        dF = p / len(yb)
        dV = h.T @ dF
        db2 = dF.sum(axis=0)
        dpre = (dF @ V.T) * (pre > 0)
        db1 = dpre.sum(axis=0)
        dblock = self.tt_.block_gradient(bond, Xb, dpre)
        return dblock, db1, dV, db2

    def _steps_per_bond(self, n):
        """Adam steps at every bond (:func:`tnlearn.models._adam.steps_per_bond`)."""
        return steps_per_bond(self.epochs_per_bond, n, self.batch_size)

    def _optimise_bond(self, bond, block, precision, Xp, y_dev, rng, adam):
        """Minibatch Adam on the merged ``block`` of ``bond`` and the dense parameters.

        ``precision`` (or None) is the ARD prior's per-entry precision of the
        block (:func:`tnlearn.ard.precision_profile`).  Returns the block and
        the dense parameters ``[b1, V, b2]``; the model is not changed.
        """
        n = Xp.shape[0]
        adam.reset("block")

        def gradients(idx, p):
            dblock, db1, dV, db2 = self._batch_gradients(Xp[idx], y_dev[idx], p["block"], bond, [p["b1"], p["V"], p["b2"]])
            if precision is not None:
                dblock = dblock + ard.penalty_gradient(p["block"], precision, n)
            return {"block": dblock, "b1": db1, "V": dV, "b2": db2}

        last, _ = minibatch_adam(adam, {"block": block, "b1": self.b1_, "V": self.V_, "b2": self.b2_}, gradients,
                                 lambda: self._backend.asarray(rng.permutation(n)), self._steps_per_bond(n),
                                 self.batch_size)
        return last["block"], [last["b1"], last["V"], last["b2"]]

    def _objective(self, Xp, Y):
        """Mean training cross-entropy of the current network over all samples."""
        return training_loss(self._decision(Xp), Y, "cross_entropy", self._backend.xp)

    def _precision(self, bond):
        """The ARD precision profile of ``bond``'s merged block, or None (no prior / legs not yet estimated)."""
        if self.rank_prior != "ard" or not self._prior_active:
            return None
        lam = self.rank_variances_
        left = lam[bond - 1] if bond > 0 else None
        right = lam[bond + 1] if bond + 1 < len(lam) else None
        return ard.precision_profile(left, right, 6, self._backend.xp)

    @staticmethod
    def _penalty(block, precision, n):
        """The ARD penalty of a block, 0 without one."""
        return 0.0 if precision is None else ard.block_penalty(block, precision, n)[0]

    def _estimate_variances(self, bond, direction, info, prune=True):
        """Re-estimate bond ``bond``'s slice variances from its split and (``prune``) cut the slices ARD rejects."""
        kept = self.tt_.ranks[bond]
        s = np.asarray(info.singular_values[:kept], dtype=np.float64)
        carrier = self.tt_.cores[bond + 1] if direction == "right" else self.tt_.cores[bond]
        lam = ard.slice_variances(s, carrier.size // kept)
        k = ard.n_supported(lam, self.rank_tol) if prune else kept
        if k < kept:  # the split's slices come in decreasing singular value: cutting is truncating
            xp = self._backend.xp
            self.tt_.cores[bond] = xp.ascontiguousarray(self.tt_.cores[bond][..., :k])
            self.tt_.cores[bond + 1] = xp.ascontiguousarray(self.tt_.cores[bond + 1][:k])
        self.rank_variances_[bond] = lam[:k]

    def _update_bond(self, bond, direction, Xp, Y, y_dev, rng, adam, truncation, loss_before):
        """One safeguarded two-site update; returns ``(split info, loss after, accepted)``.

        The update (Adam on the merged block, then the truncated split) is
        kept only if the training objective it was computed from — the mean
        cross-entropy over all samples plus the ARD penalty of the block —
        did not rise; otherwise the old cores and dense parameters come back
        (re-split exactly, so the gauge still moves with the sweep).
        """
        tt = self.tt_
        old_cores, old_params = (tt.cores[bond], tt.cores[bond + 1]), (self.b1_, self.V_, self.b2_)
        precision = self._precision(bond)
        n = Xp.shape[0]
        block0 = tt.merge(bond)
        before = loss_before + self._penalty(block0, precision, n)
        block, params = self._optimise_bond(bond, block0, precision, Xp, y_dev, rng, adam)
        self.b1_, self.V_, self.b2_ = params
        if self.rank_prior == "ard":  # ARD only removes slices: a pruned slice has infinite precision
            truncation = Truncation(min(truncation.max_bond, tt.ranks[bond]), truncation.cutoff)
        info = tt.split(bond, block, direction, truncation)
        if self.rank_prior == "ard":
            self._estimate_variances(bond, direction, info, prune=self._prior_active)
        data_after = self._objective(Xp, Y)
        after = data_after + (0.0 if precision is None else self._penalty(tt.merge(bond), precision, n))
        if np.isfinite(after) and after <= before:
            return info, data_after, True
        tt.cores[bond], tt.cores[bond + 1] = old_cores
        self.b1_, self.V_, self.b2_ = old_params
        info = tt.split(bond, block0, direction, Truncation(old_cores[0].shape[3]))  # exact: block0 has that rank
        if self.rank_prior == "ard":
            self._estimate_variances(bond, direction, info, prune=False)
        return info, loss_before, False

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, X, y, eval_set=None, on_sweep=None, init_from=None):
        """Train by sweeps over the TT cores.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)
            Flattened images (any range: centred and scaled by the training statistics).
        y : array-like, shape (n_samples,)
        eval_set : tuple (X_test, y_test), optional
            Scored after every sweep (``history_[k].test_accuracy``).
        on_sweep : callable, optional
            Called as ``on_sweep(self)`` after every sweep (e.g. to save a checkpoint).
        init_from : MLPClassifier or tuple, optional
            Start from a trained dense network instead of random cores: a fitted
            scikit-learn ``MLPClassifier`` with one ReLU hidden layer (and at
            least 3 classes), or its layers ``(W1, b1, W2, b2)`` of shapes
            ``(n_features, H)``, ``(H,)``, ``(H, n_classes)``, ``(n_classes,)``
            acting on the raw features.  The hidden layer is compressed by
            TT-SVD (:func:`~tnlearn.stages.tt.tt_from_dense`, ``max_rank``,
            ``cutoff``) and the sweeps fine-tune it (Novikov et al. 2015: a
            trained dense layer turned into a TT layer).  ``prod(hidden_shape)``
            must equal ``H`` (default: the power-of-two factorisation of ``H``;
            for other widths pass ``hidden_shape``, the error suggests one).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            When ``init_from`` is not a one-hidden-layer ReLU network whose
            shapes fit ``X``, the classes and the TT factorisation.
        """
        self._check_params()
        X, classes, y_idx = self._validate_Xy(X, y)
        eval_set = self._validate_eval_set(eval_set)
        dense = None if init_from is None else _dense_layers(init_from, X.shape[1], classes)
        in_shape, hidden = self._shapes(X.shape[1], None if dense is None else dense[0].shape[1])
        rng = np.random.default_rng(self.random_state)
        backend = self._backend = get_backend(self.backend)
        xp = backend.xp
        dtype = np.dtype(self.dtype)
        self.classes_ = classes
        self.input_mean_ = X.mean(axis=0)
        self.input_scale_ = float(X.std()) or 1.0
        H, L = math.prod(hidden), len(classes)
        if dense is None:
            self.tt_ = TTMatrix.random(in_shape, hidden, self.max_rank, rng, dtype, backend)
            self.b1_ = xp.zeros(H, dtype=dtype)
            self.V_ = backend.asarray((rng.standard_normal((H, L)) * np.sqrt(2.0 / H)).astype(dtype))
            self.b2_ = xp.zeros(L, dtype=dtype)
        else:  # x @ W1 + b1 = x_c @ (scale W1) + (mean @ W1 + b1) for the centred, scaled inputs x_c
            W1, b1, W2, b2 = dense
            Wp = np.zeros((math.prod(in_shape), H))
            Wp[: X.shape[1]] = self.input_scale_ * W1
            self.tt_, info = tt_from_dense(Wp, in_shape, hidden, self.max_rank, self.cutoff, dtype=dtype,
                                           backend=backend)
            self.b1_ = backend.asarray((self.input_mean_ @ W1 + b1).astype(dtype))
            self.V_, self.b2_ = backend.asarray(W2.astype(dtype)), backend.asarray(b2.astype(dtype))
        self.tt_.orthogonalize(0)  # mixed-canonical gauge, centre at core 0, where the first sweep starts
        self.rank_variances_ = [None] * (self.tt_.n_cores - 1)  # ARD: estimated at each bond's first split
        self.history_ = History(meta={"model": "tt-net", "in_shape": list(in_shape), "hidden_shape": list(hidden),
                                      "rank_prior": self.rank_prior, "dense_params": self.tt_.in_features * H,
                                      "init": "random" if dense is None else "dense"})
        if dense is not None:
            self.history_.meta["compressed_relative_error"] = info["relative_error"]
        Xp = self._prepare(X, xp)
        Y = backend.asarray(np.eye(L, dtype=dtype)[y_idx])  # one-hot, for the recorded loss
        y_dev = backend.asarray(y_idx)
        eval_data = None if eval_set is None else (self._prepare(eval_set[0], xp), eval_set[1])
        adam = Adam(self.learning_rate, xp=xp)
        schedule = bond_sequence(self.tt_.n_cores, "both")
        truncation = Truncation(self.max_rank, self.cutoff)
        step = {"scale": 1.0}  # halved by every rejected bond update, for the rest of the fit

        def one_sweep():
            adam.learning_rate = self.learning_rate * self.lr_decay ** len(self.history_) * step["scale"]
            # ARD: the last sweep fine-tunes the learned ranks on the data alone (no prior, no cuts)
            self._prior_active = self.n_sweeps == 1 or len(self.history_) < self.n_sweeps - 1
            t0 = time.perf_counter()
            bar = None
            if self.verbose >= 2:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(schedule), desc=f"sweep {len(self.history_) + 1}", leave=False)
            errors, rejected = [], 0
            loss = self._objective(Xp, Y) if not len(self.history_) else self._last_loss()
            for bond, direction in schedule:
                info, loss, accepted = self._update_bond(bond, direction, Xp, Y, y_dev, rng, adam, truncation, loss)
                errors.append(float(info.discarded_weight))
                if not accepted:
                    rejected += 1
                    step["scale"] *= 0.5
                    adam.learning_rate *= 0.5
                if bar is not None:
                    bar.update()
            if bar is not None:
                bar.close()
            return self._record(Xp, Y, y_idx, eval_data, errors, rejected, time.perf_counter() - t0)

        def snapshot():  # the TT cores, the dense layers and the ARD variances as they were before the sweep
            cores, b1, V, b2 = list(self.tt_.cores), self.b1_.copy(), self.V_.copy(), self.b2_.copy()
            variances = list(self.rank_variances_)

            def restore():
                self.tt_.cores = cores
                self.b1_, self.V_, self.b2_ = b1, V, b2
                self.rank_variances_ = variances
            return restore

        self._sweep_loop(self.n_sweeps, one_sweep, snapshot, on_sweep)
        return self

    def _record(self, Xp, Y, y_idx, eval_data, errors, rejected, seconds):
        """Append the sweep's record and return it; None (after a warning) when the sweep diverged."""
        xp = self._backend.xp
        f = self._decision(Xp)
        loss = training_loss(f, Y, "cross_entropy", xp)
        # the ARD prior trades some fit for rank on purpose: there, only a doubling counts as divergence
        reason = divergence(self._last_loss(), loss, ARD_RISE if self._prior_active and self.rank_prior else
                            DIVERGENCE_RISE)
        if reason is not None:
            warn_diverged(type(self).__name__, len(self.history_) + 1, reason,
                          "lower learning_rate (e.g. learning_rate=1e-3) or use dtype='float64'")
            return None
        train_acc = float(np.mean(self._backend.asnumpy(xp.argmax(f, axis=1)) == y_idx))
        test_acc = None
        if eval_data is not None:
            scores = self._backend.asnumpy(self._decision(eval_data[0]))
            test_acc = float(np.mean(self.classes_[np.argmax(scores, axis=1)] == eval_data[1]))
        record = SweepRecord.from_splits(
            len(self.history_) + 1, loss, train_acc, test_acc, errors, self.tt_.ranks, seconds,
            rejected_updates=rejected, data_loss=loss, tt_ranks=self.tt_.ranks,
            compression=float(self.tt_.compression), n_params=self.tt_.n_params,
        )
        self.history_.append(record)
        if self.verbose:
            print(f"{record.headline()}  TT-ranks {self.tt_.ranks}  compression {self.tt_.compression:.0f}x  "
                  f"max trunc err {record.max_truncation_error:.2e}  {seconds:.2f} s", flush=True)
        return record

    # -- prediction -------------------------------------------------------------------------------
    def _decision(self, Xp, tt=None, params=None, chunk=8192):
        """Logits of prepared inputs ``Xp`` chunk by chunk, on the backend, in ``Xp``'s dtype."""
        xp = self._backend.xp
        out = xp.empty((Xp.shape[0], len(self.classes_)), dtype=Xp.dtype)
        for start in range(0, Xp.shape[0], chunk):
            out[start : start + chunk] = self._logits(Xp[start : start + chunk], params=params, tt=tt)[2]
        return out

    def _scores(self, X):
        """Logits, shape (n_samples, n_classes), float64 (host).

        Computed in float64 whatever the training dtype, so that a sample's
        scores do not depend on the batch it comes in (float32 products over
        a batch round differently with its size and order).
        """
        be = self._backend
        tt = TTMatrix([c.astype(np.float64) for c in self.tt_.cores], be)
        params = [p.astype(np.float64) for p in (self.b1_, self.V_, self.b2_)]
        return be.asnumpy(self._decision(self._prepare(X, be.xp, np.float64), tt, params))

    def predict_proba(self, X):
        """Softmax of the logits, shape (n_samples, n_classes)."""
        self._check_fitted()
        return softmax(self._scores(self._validate_X(X, reset=False)), np)

    # -- model files ------------------------------------------------------------------------------
    @property
    def size_label(self):
        """``"TT-rank <max_rank>"``, or ``"TT-rank auto (<= max_rank)"`` with the ARD prior."""
        if self.rank_prior == "ard":
            return f"TT-rank auto (<= {self.max_rank})"
        return f"TT-rank {self.max_rank}"

    def _get_state(self):
        """TT cores ``tt_core_0 ..`` (``(r, n, m, r')``), ``b1``, ``V``, ``b2``, the input centring."""
        be = self._backend
        arrays = {"input_mean": np.asarray(self.input_mean_), "b1": be.asnumpy(self.b1_), "V": be.asnumpy(self.V_),
                  "b2": be.asnumpy(self.b2_)}
        arrays.update({f"tt_core_{i}": be.asnumpy(c) for i, c in enumerate(self.tt_.cores)})
        return {"n_tt_cores": self.tt_.n_cores, "input_scale": float(self.input_scale_)}, arrays

    def _set_state(self, header, arrays, backend):
        for key in ("in_shape", "hidden_shape"):  # JSON lists back to tuples
            if getattr(self, key) is not None:
                setattr(self, key, tuple(getattr(self, key)))
        self._check_params()
        n_features = self.n_features_in_
        scale = header_float(header, "input_scale")
        if not scale > 0:
            raise ValueError(f"input_scale={scale} must be a positive finite number")
        dtype = np.dtype(self.dtype)
        cores = [arrays[f"tt_core_{i}"] for i in range(header_int(header, "n_tt_cores"))]
        for i, core in enumerate(cores):
            check_finite_floats(f"tt_core_{i}", core, 4, dtype)
        tt = TTMatrix(cores, backend)  # checks that the cores connect
        b1, V, b2, mean = arrays["b1"], arrays["V"], arrays["b2"], arrays["input_mean"]
        for name, array, ndim in (("b1", b1, 1), ("V", V, 2), ("b2", b2, 1)):
            check_finite_floats(name, array, ndim, dtype)
        check_finite_floats("input_mean", mean, 1)
        H, L = tt.out_features, len(self.classes_)
        if b1.shape != (H,) or V.shape != (H, L) or b2.shape != (L,) or mean.shape != (n_features,):
            raise ValueError(
                f"dense parameters of shapes b1 {b1.shape}, V {V.shape}, b2 {b2.shape}, input_mean {mean.shape} "
                f"do not fit a TT layer of {H} outputs, {L} classes and {n_features} features"
            )
        if tt.in_features < n_features:
            raise ValueError(f"the TT layer takes {tt.in_features} inputs, fewer than n_features_in={n_features}")
        for key, got in (("in_shape", tt.in_shape), ("hidden_shape", tt.out_shape)):
            if getattr(self, key) is not None and tuple(getattr(self, key)) != got:
                raise ValueError(f"the TT cores have {key} {got} but the saved parameters say {getattr(self, key)}")
        self._backend = backend
        self.tt_ = tt
        self.b1_, self.V_, self.b2_ = backend.asarray(b1), backend.asarray(V), backend.asarray(b2)
        self.input_mean_, self.input_scale_ = mean, scale

    # -- size ------------------------------------------------------------------------------------
    @property
    def n_params_(self):
        """Trained parameters: TT cores, hidden bias, output layer."""
        self._check_fitted()
        return int(self.tt_.n_params + self.b1_.size + self.V_.size + self.b2_.size)

    @property
    def compression_(self):
        """Dense parameters of the TT layer's matrix over its TT parameters."""
        self._check_fitted()
        return float(self.tt_.compression)
