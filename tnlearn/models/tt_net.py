"""TT-net: a tensor-train dense layer, a ReLU and a dense output layer (Novikov et al. 2015).

::

    x (flattened, zero-padded to prod(in_shape), centred)
      -> pre = x @ W_tt + b1        W_tt a TTMatrix, shape (prod in_shape, prod hidden_shape)
      -> h   = relu(pre)
      -> f   = h @ V + b2           dense, shape (prod hidden_shape, n_classes)
      -> softmax cross-entropy

Trained by two-site sweeps over the TT cores: at every bond the two cores are
merged, the merged block (with ``V``, ``b1``, ``b2``) is optimised by minibatch
Adam for ``epochs_per_bond`` passes over the data — the block's gradient is the
upstream gradient back-propagated through the output layer and the ReLU, then
contracted with the input and the other cores (the block's environments) — and
the block is split by truncated SVD (``max_rank``, ``cutoff``), so the TT-ranks
adapt and every split's discarded weight is recorded.
"""

from __future__ import annotations

import math
import time

import numpy as np

from tnlearn.backend import get_backend
from tnlearn.history import History, SweepRecord
from tnlearn.models import _constraints as C
from tnlearn.models._base import TNClassifier
from tnlearn.models._state import check_finite_floats, header_float, header_int
from tnlearn.models._validation import check_dtype, check_positive_float, check_positive_int
from tnlearn.models._adam import Adam
from tnlearn.solvers import softmax
from tnlearn.stages.tt import TTMatrix, check_tt_shapes, factorize
from tnlearn.models._training import divergence, warn_diverged
from tnlearn.sweeps import bond_sequence, training_loss
from tnlearn.truncation import Truncation, check_truncation_args


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
        default: :func:`~tnlearn.stages.tt.factorize` of the input size, and the
        same for the hidden layer.
    max_rank : int, default=4
        Maximum TT-rank (the ``max_bond`` of every split).
    cutoff : float, default=0.0
        Relative discarded weight allowed at each split (``cutoff_mode="rsum2"``).
    n_sweeps : int, default=4
        Full sweeps (right then left over the ``n_cores - 1`` bonds).
    epochs_per_bond : float, default=0.5
        Passes of minibatch Adam over the training set at every bond.
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
        ``bond_dims`` are the TT-ranks after each sweep.
    """

    def __init__(
        self,
        n_cores=5,
        in_shape=None,
        hidden_shape=None,
        max_rank=4,
        cutoff=0.0,
        n_sweeps=4,
        epochs_per_bond=0.5,
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
        "max_rank": C.POSITIVE_INT, "cutoff": C.NON_NEGATIVE, "n_sweeps": C.POSITIVE_INT,
        "epochs_per_bond": C.POSITIVE, "batch_size": C.POSITIVE_INT, "learning_rate": C.POSITIVE, "lr_decay": C.POSITIVE,
    }

    def _check_params(self):
        self._validate_hyperparameters()
        check_truncation_args(self.max_rank, self.cutoff, "rsum2")
        for name in ("n_cores", "n_sweeps", "batch_size"):
            check_positive_int(name, getattr(self, name))
        if self.n_cores < 2 and self.in_shape is None:
            raise ValueError(f"n_cores={self.n_cores}: a sweep needs at least 2 TT cores")
        check_positive_float("epochs_per_bond", self.epochs_per_bond, "1.0")
        check_positive_float("learning_rate", self.learning_rate, "2e-3")
        check_positive_float("lr_decay", self.lr_decay, "0.5")
        check_dtype(self.dtype)

    def _shapes(self, n_features):
        in_shape = self.in_shape if self.in_shape is not None else factorize(n_features, self.n_cores)
        hidden = self.hidden_shape if self.hidden_shape is not None else in_shape
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

    def _optimise_bond(self, bond, Xp, y_idx, rng, adam):
        """Minibatch Adam on the merged block of ``bond`` and the dense parameters."""
        block = self.tt_.merge(bond)
        params = [self.b1_, self.V_, self.b2_]
        n = Xp.shape[0]
        n_steps = max(1, int(round(self.epochs_per_bond * n / self.batch_size)))
        adam.reset("block")
        y_dev = self._backend.asarray(y_idx)
        order, pos = self._backend.asarray(rng.permutation(n)), 0
        for _ in range(n_steps):
            if pos >= n:  # an epoch is complete: a fresh order (the last batch of one may be short)
                order, pos = self._backend.asarray(rng.permutation(n)), 0
            idx = order[pos : pos + self.batch_size]
            pos += len(idx)
            dblock, db1, dV, db2 = self._batch_gradients(Xp[idx], y_dev[idx], block, bond, params)
            block = adam.step("block", block, dblock)
            params = [adam.step(name, p, g) for name, p, g in zip(("b1", "V", "b2"), params, (db1, dV, db2))]
        self.b1_, self.V_, self.b2_ = params
        return block

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, X, y, eval_set=None, on_sweep=None):
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

        Returns
        -------
        self
        """
        self._check_params()
        X, classes, y_idx = self._validate_Xy(X, y)
        eval_set = self._validate_eval_set(eval_set)
        in_shape, hidden = self._shapes(X.shape[1])
        rng = np.random.default_rng(self.random_state)
        backend = self._backend = get_backend(self.backend)
        xp = backend.xp
        dtype = np.dtype(self.dtype)
        self.classes_ = classes
        self.input_mean_ = X.mean(axis=0)
        self.input_scale_ = float(X.std()) or 1.0
        self.tt_ = TTMatrix.random(in_shape, hidden, self.max_rank, rng, dtype, backend)
        H, L = self.tt_.out_features, len(classes)
        self.b1_ = xp.zeros(H, dtype=dtype)
        self.V_ = backend.asarray((rng.standard_normal((H, L)) * np.sqrt(2.0 / H)).astype(dtype))
        self.b2_ = xp.zeros(L, dtype=dtype)
        self.history_ = History(meta={"model": "tt-net", "in_shape": list(in_shape), "hidden_shape": list(hidden)})
        Xp = self._prepare(X, xp)
        Y = backend.asarray(np.eye(L, dtype=dtype)[y_idx])  # one-hot, for the recorded loss
        eval_data = None if eval_set is None else (self._prepare(eval_set[0], xp), eval_set[1])
        adam = Adam(self.learning_rate, xp=xp)
        schedule = bond_sequence(self.tt_.n_cores, "both")
        truncation = Truncation(self.max_rank, self.cutoff)

        def one_sweep():
            adam.learning_rate = self.learning_rate * self.lr_decay ** len(self.history_)
            t0 = time.perf_counter()
            bar = None
            if self.verbose >= 2:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(schedule), desc=f"sweep {len(self.history_) + 1}", leave=False)
            errors = []
            for bond, direction in schedule:
                block = self._optimise_bond(bond, Xp, y_idx, rng, adam)
                info = self.tt_.split(bond, block, direction, truncation)
                errors.append(float(info.discarded_weight))
                if bar is not None:
                    bar.update()
            if bar is not None:
                bar.close()
            return self._record(Xp, Y, y_idx, eval_data, errors, time.perf_counter() - t0)

        def snapshot():  # the TT cores and the dense layers as they were before the sweep
            cores, b1, V, b2 = list(self.tt_.cores), self.b1_.copy(), self.V_.copy(), self.b2_.copy()

            def restore():
                self.tt_.cores = cores
                self.b1_, self.V_, self.b2_ = b1, V, b2
            return restore

        self._sweep_loop(self.n_sweeps, one_sweep, snapshot, on_sweep)
        return self

    def _record(self, Xp, Y, y_idx, eval_data, errors, seconds):
        """Append the sweep's record and return it; None (after a warning) when the sweep diverged."""
        xp = self._backend.xp
        f = self._decision(Xp)
        loss = training_loss(f, Y, "cross_entropy", xp)
        reason = divergence(self._last_loss(), loss)
        if reason is not None:
            warn_diverged(type(self).__name__, len(self.history_) + 1, f"{reason}; lower learning_rate")
            return None
        train_acc = float(np.mean(self._backend.asnumpy(xp.argmax(f, axis=1)) == y_idx))
        test_acc = None
        if eval_data is not None:
            scores = self._backend.asnumpy(self._decision(eval_data[0]))
            test_acc = float(np.mean(self.classes_[np.argmax(scores, axis=1)] == eval_data[1]))
        record = SweepRecord.from_splits(
            len(self.history_) + 1, loss, train_acc, test_acc, errors, self.tt_.ranks, seconds
        )
        self.history_.append(record)
        if self.verbose:
            print(f"{record.headline()}  TT-ranks {self.tt_.ranks}  "
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
        """``"TT-rank <max_rank>"``."""
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
