"""tn-cnn: a whole convolutional network as a network of small tensors, trained by two-site sweeps.

::

    image (H, W, 1), centred
      -> [TT conv k x k, c_1 channels, ReLU, max-pool p]  ... one stage per entry of ``channels``
      -> [dense TT layer on the flattened map, n_hidden units, ReLU]    (optional)
      -> dense output layer, softmax cross-entropy

Every convolution kernel and the dense layer is a tensor train
(:class:`~tnlearn.stages.tt_conv.TTConv`: Garipov et al. 2016 for the kernels,
Novikov et al. 2015 for the dense layer), so the network's weights are a
chain of small cores per stage.  A sweep trains the stages one after another,
bottom up; in a stage it visits every bond left to right and back, merges
the two cores, moves the merged block — together with the biases of this
stage and the ones above and the output layer — by minibatch Adam, with its
gradient back-propagated through every stage above it, and cuts the block
again by truncated SVD (``conv_rank`` / ``max_rank``, ``cutoff``), which
records the discarded weight and lets the ranks adapt.  The stages below
the one being swept are fixed, so its input is computed once per stage and
cached (the sweep's environment).

Every bond update is safeguarded as in :class:`~tnlearn.models.TTNetClassifier`:
the mean training cross-entropy over all samples is evaluated after the split;
when the last Adam iterate raised it, the average of the second half's iterates
is tried, and when that raised it too the update is undone (and the Adam step
halved for the rest of the fit), so no sweep raises the recorded loss; a sweep
that diverges anyway is rolled back with a warning.
"""

from __future__ import annotations

import math
import time
from numbers import Integral

import numpy as np
from sklearn.utils._param_validation import StrOptions

from tnlearn.backend import get_backend
from tnlearn.distributed import check_same_data, get_comm, make_shard
from tnlearn.history import History, SweepRecord
from tnlearn.models import _constraints as C
from tnlearn.models._adam import Adam, minibatch_adam, steps_per_bond
from tnlearn.models._base import TNClassifier
from tnlearn.models._state import check_finite_floats, header_float, header_int
from tnlearn.models._training import DIVERGENCE_RISE, divergence, warn_diverged
from tnlearn.models._validation import check_dtype, check_positive_float
from tnlearn.solvers import softmax
from tnlearn.stages.tt import TTMatrix
from tnlearn.stages.tt_conv import TTConv, conv_output_size
from tnlearn.sweeps import bond_sequence
from tnlearn.truncation import Truncation, check_truncation_args

#: Samples per chunk when the whole training set goes through the network (objective, scores, caches).
FORWARD_CHUNK = 1024


def image_geometry(n_features, image_shape):
    """``(H, W, c)`` of flattened images: ``image_shape`` (``(H, W)`` or ``(H, W, c)``) or a square grey image.

    Raises
    ------
    ValueError
        When the shape does not hold ``n_features`` numbers, or the images are not square and no shape is given.
    """
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        shape = shape + (1,) if len(shape) == 2 else shape
        if len(shape) != 3 or math.prod(shape) != n_features:
            raise ValueError(f"image_shape={tuple(image_shape)} does not hold {n_features} features; pass (H, W) or "
                             f"(H, W, channels) with H * W * channels = {n_features}")
        return shape
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise ValueError(f"X has {n_features} features, not a square grey image; pass image_shape=(H, W) or "
                         "(H, W, channels) (pixels in row-major order, channels last)")
    return side, side, 1


def feature_map_shapes(image_shape, channels, kernel_size=3, stride=1, pool_size=2):
    """``(H, W, c)`` after each convolution stage (convolution with ``(k - 1) // 2`` padding, then pooling).

    Parameters
    ----------
    image_shape : tuple (H, W, c)
    channels : sequence of int
    kernel_size, stride, pool_size : int

    Returns
    -------
    list of tuple

    Raises
    ------
    ValueError
        When a stage's output is smaller than its pooling window.
    """
    shape, shapes = tuple(image_shape), []
    k, pad = kernel_size, (kernel_size - 1) // 2
    for i, c in enumerate(channels):
        conv = tuple(conv_output_size(size, k, stride, pad) for size in shape[:2])
        if min(conv) < pool_size:
            raise ValueError(f"the {conv[0]}x{conv[1]} output of convolution {i + 1} is smaller than "
                             f"pool_size={pool_size}: use fewer convolutions (entries in channels={tuple(channels)}), "
                             "a smaller pool_size, stride or kernel_size")
        shape = (conv[0] // pool_size, conv[1] // pool_size, int(c))
        shapes.append(shape)
    return shapes


class TNCNNClassifier(TNClassifier):
    """A CNN whose convolution kernels and dense layer are tensor trains, trained by two-site sweeps.

    Parameters
    ----------
    channels : tuple of int, default=(16, 32)
        Output channels of each convolution stage (one stage per entry).
    kernel_size : int, default=3
        Side of the (square) kernels, with ``(kernel_size - 1) // 2`` zero
        padding (an odd kernel at stride 1 keeps the map's size).
    stride : int, default=1
        Step of the kernel: 1 for overlapping patches, ``kernel_size`` for
        non-overlapping ones (with ``pool_size=1``, a patch-wise stage).
    pool_size : int, default=2
        Max pooling after each convolution (1: none).
    conv_rank : int or None, default=None
        Largest TT-rank of the kernels (None: exact; a 3 x 3 kernel from 16 to
        32 channels has TT-ranks at most 12 and 64).
    n_hidden : int or None, default=256
        Units of the dense TT layer after the convolutions (None: the output
        layer reads the flattened feature map directly).
    max_rank : int, default=8
        Largest TT-rank of the dense TT layer.
    cutoff : float, default=0.0
        Relative discarded weight allowed at each split: the smallest singular
        values whose squares sum to at most ``cutoff`` times the total are cut.
    n_sweeps : int, default=4
        Full sweeps; each visits every bond of every stage twice (right, then left).
    epochs_per_bond : float or "auto", default="auto"
        Passes of minibatch Adam over the training set at every bond;
        ``"auto"``: half an epoch, at least 100 steps.
    batch_size : int, default=128
    learning_rate : float, default=2e-3
    lr_decay : float, default=1.0
        The Adam step of sweep ``k`` (1-based) is ``learning_rate * lr_decay**(k - 1)``.
    image_shape : tuple, optional
        ``(H, W)`` or ``(H, W, channels)`` (channels last); default: square grey images.
    warm_start : bool, default=False
        A second ``fit`` continues from the fitted network for ``n_sweeps``
        more sweeps (same classes and features); a run resumed from a saved
        model this way continues bit for bit (each sweep's minibatch order is
        drawn from a generator seeded by ``seed_`` and the sweep number).
        On other samples the first new sweep is not judged against the old
        fit's last loss (``history_.meta["data_fingerprint"]``).
    dtype : {"float32", "float64"}, default="float32"
        Of the cores and the training arithmetic (scores are computed in float64).
    backend : {"numpy", "cupy"} or Backend, default="numpy"
    random_state : int, Generator or None, default=None
        Seeds the initial cores and (through ``seed_``) every sweep's minibatch order.
    verbose : int, default=0
        1: a line per sweep; 2: also a progress bar over bonds.

    Attributes
    ----------
    stages_ : list of TTConv
        The convolution stages, then the dense TT layer (one patch over the whole map).
    V_, b_ : ndarray
        Output layer, shapes ``(n_inputs, n_classes)`` and ``(n_classes,)``.
        ``decision_function`` returns its outputs (the logits, before the softmax
        of ``predict_proba``).
    classes_ : ndarray
    image_shape_ : tuple (H, W, c)
        The images' geometry (from ``image_shape`` or the square of ``n_features_in_``).
    input_mean_, input_scale_ : float
        Mean and standard deviation of the training pixels; inputs are centred and scaled by them.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` had column names (a DataFrame).
    seed_ : int
        Seed of the sweeps' minibatch orders (drawn from ``random_state``).
    step_scale_ : float
        Factor of ``learning_rate`` left by the rejected bond updates (each halves it).
    history_ : History
        ``stages[name]`` per sweep: ``bond_dims``, ``max_truncation_error``,
        ``loss_before`` / ``loss_after``, ``seconds``, ``rejected_updates``,
        ``n_params`` and ``dense_params`` (the same stage with a dense kernel).

    References
    ----------
    Garipov, Podoprikhin, Novikov & Vetrov, "Ultimate tensorization: compressing convolutional
    and FC layers alike", arXiv 1611.03214 (2016).  Novikov, Podoprikhin, Osokin & Vetrov,
    "Tensorizing Neural Networks", NeurIPS 2015.  Stoudenmire & Schwab, "Supervised learning with
    tensor networks", NeurIPS 2016 (the two-site sweep).
    """

    def __init__(
        self,
        channels=(16, 32),
        kernel_size=3,
        stride=1,
        pool_size=2,
        conv_rank=None,
        n_hidden=256,
        max_rank=8,
        cutoff=0.0,
        n_sweeps=4,
        epochs_per_bond="auto",
        batch_size=128,
        learning_rate=2e-3,
        lr_decay=1.0,
        image_shape=None,
        warm_start=False,
        dtype="float32",
        backend="numpy",
        random_state=None,
        verbose=0,
    ):
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.pool_size = pool_size
        self.conv_rank = conv_rank
        self.n_hidden = n_hidden
        self.max_rank = max_rank
        self.cutoff = cutoff
        self.n_sweeps = n_sweeps
        self.epochs_per_bond = epochs_per_bond
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.lr_decay = lr_decay
        self.image_shape = image_shape
        self.warm_start = warm_start
        self.dtype = dtype
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose

    _parameter_constraints = {
        **C.COMMON,
        "channels": [tuple, list], "kernel_size": C.POSITIVE_INT, "stride": C.POSITIVE_INT,
        "pool_size": C.POSITIVE_INT,
        "conv_rank": [*C.POSITIVE_INT, None], "n_hidden": [*C.POSITIVE_INT, None], "max_rank": C.POSITIVE_INT,
        "cutoff": C.NON_NEGATIVE, "n_sweeps": C.POSITIVE_INT, "epochs_per_bond": [StrOptions({"auto"}), *C.POSITIVE],
        "batch_size": C.POSITIVE_INT, "learning_rate": C.POSITIVE, "lr_decay": C.POSITIVE,
        "image_shape": [tuple, list, None], "warm_start": ["boolean"],
    }

    def _check_params(self):
        self._validate_hyperparameters()
        channels = tuple(self.channels)
        if not channels or any(isinstance(c, bool) or not isinstance(c, Integral) or c < 1 for c in channels):
            raise ValueError(f"channels={self.channels!r} must be a non-empty tuple of integers >= 1, e.g. (16, 32)")
        check_truncation_args(self.max_rank, self.cutoff, "rsum2")
        if self.epochs_per_bond != "auto":
            check_positive_float("epochs_per_bond", self.epochs_per_bond, "0.5")
        check_positive_float("learning_rate", self.learning_rate, "2e-3")
        check_dtype(self.dtype)

    # -- the network --------------------------------------------------------------------------
    def _build(self, shape, rng, dtype, backend):
        """Random stages for ``(H, W, c)`` images; returns the stages and the output layer's input size."""
        stages = []
        k = self.kernel_size
        feature_map_shapes(shape, tuple(self.channels), k, self.stride, self.pool_size)  # refuses a map too small
        for c_out in self.channels:
            stage = TTConv.random(shape, c_out, (k, k), rng, self.conv_rank, stride=self.stride, padding=(k - 1) // 2,
                                  pool=self.pool_size, dtype=dtype, backend=backend)
            stages.append(stage)
            shape = stage.output_shape(shape)
        if self.n_hidden is not None:
            stage = TTConv.random(shape, self.n_hidden, shape[:2], rng, self.max_rank, dtype=dtype, backend=backend)
            stages.append(stage)
            shape = stage.output_shape(shape)
        n_in = math.prod(shape)
        return stages, n_in

    def _truncation(self, s):
        """The split's truncation of stage ``s``: ``conv_rank`` for convolutions, ``max_rank`` for the dense TT."""
        dense = self.n_hidden is not None and s == len(tuple(self.channels))
        return Truncation(self.max_rank if dense else self.conv_rank, self.cutoff)

    def stage_names(self):
        """``["conv1", "conv2", ..., "dense"]``: the names of :attr:`stages_` in the history."""
        names = [f"conv{i + 1}" for i in range(len(tuple(self.channels)))]
        return names + (["dense"] if self.n_hidden is not None else [])

    def _forward(self, z, s, trained=None, params=None, weights=None):
        """Logits from the input ``z`` of stage ``s``, the last stage's output map and the caches of stages ``s ..``.

        ``trained = (j, block)`` replaces cores ``j, j+1`` of stage ``s``;
        ``params`` the biases and output layer (``{"bias<i>": .., "V": .., "b": ..}``);
        ``weights`` the kernel matrices of the stages (formed once per bond).
        """
        caches = []
        for i in range(s, len(self.stages_)):
            stage = self.stages_[i]
            block, j = (trained[1], trained[0]) if trained is not None and i == s else (None, None)
            W = weights[i] if weights is not None and block is None else None
            bias = params[f"bias{i}"] if params is not None else None
            z, cache = stage.forward(z, block, j, bias, W)
            caches.append(cache)
        V, b = (params["V"], params["b"]) if params is not None else (self.V_, self.b_)
        return z.reshape(z.shape[0], -1) @ V + b, z, caches

    def _batch_gradients(self, z, y, s, j, block, params, weights, batch_size):
        """Cross-entropy gradients of minibatch rows ``z``: the block of bond ``j`` of stage ``s`` and ``params``.

        The gradients of the summed loss over ``batch_size``: the mean's over a
        minibatch of that size, or one rank's share of it.
        """
        xp = self._backend.xp
        f, out, caches = self._forward(z, s, (j, block), params, weights)
        p = softmax(f, xp)
        p[xp.arange(len(y)), y] -= 1
        dF = p / batch_size
        grads = {"V": out.reshape(len(y), -1).T @ dF, "b": dF.sum(axis=0)}
        d = (dF @ params["V"].T).reshape(out.shape)
        d_block = None
        for i in range(len(self.stages_) - 1, s - 1, -1):
            d, d_block_i, d_bias = self.stages_[i].backward(d, caches[i - s], j if i == s else None, need_input=i > s)
            grads[f"bias{i}"] = d_bias
            if i == s:
                d_block = d_block_i
        return d_block, grads

    def _stage_inputs(self, Z0, s):
        """The input of stage ``s`` for every sample (the fixed stages below it applied chunk by chunk)."""
        if s == 0:
            return Z0
        xp = self._backend.xp
        out = None
        for start in range(0, Z0.shape[0], FORWARD_CHUNK):
            z = Z0[start : start + FORWARD_CHUNK]
            for i in range(s):
                z = self.stages_[i].forward(z)[0]
            if out is None:
                out = xp.empty((Z0.shape[0],) + z.shape[1:], dtype=z.dtype)
            out[start : start + len(z)] = z
        return out

    def _logits_from(self, Z, s, weights=None, params=None):
        """Logits of every sample from the cached input ``Z`` of stage ``s``, chunk by chunk.

        ``weights`` / ``params`` as in :meth:`_forward` (default: the model's own).
        """
        xp = self._backend.xp
        out = xp.empty((Z.shape[0], len(self.classes_)), dtype=Z.dtype)
        if weights is None:  # every kernel matrix formed once, not once per chunk
            weights = {i: self.stages_[i].weight() for i in range(s, len(self.stages_))}
        for start in range(0, Z.shape[0], FORWARD_CHUNK):
            chunk = Z[start : start + FORWARD_CHUNK]
            out[start : start + FORWARD_CHUNK] = self._forward(chunk, s, params=params, weights=weights)[0]
        return out

    def _objective(self, Z, s, Y):
        """Mean training cross-entropy of the current network over all ranks' samples, from stage ``s``'s input."""
        from tnlearn.sweeps import training_loss

        shard = self._shard
        local = training_loss(self._logits_from(Z, s), Y, "cross_entropy", self._backend.xp)
        return float(shard.comm.allreduce_sum(np.float64(local * shard.n_local))) / shard.n_total

    def _params(self):
        params = {f"bias{i}": st.bias for i, st in enumerate(self.stages_)}
        params.update(V=self.V_, b=self.b_)
        return params

    def _set_params(self, params):
        for i, st in enumerate(self.stages_):
            st.bias = params[f"bias{i}"]
        self.V_, self.b_ = params["V"], params["b"]

    def _steps_per_bond(self, n):
        """Adam steps at every bond (:func:`tnlearn.models._adam.steps_per_bond`)."""
        return steps_per_bond(self.epochs_per_bond, n, self.batch_size)

    def _update_bond(self, s, j, direction, Z, Y, y_dev, rng, learning_rate, loss_before):
        """One safeguarded two-site update of bond ``j`` of stage ``s``; ``(split info, loss after, accepted)``.

        The local problem — the mean cross-entropy as a function of the
        merged block, the biases of stages ``s ..`` and the output layer — is
        solved by minibatch Adam started afresh (no moments carried from the
        previous bond), so an update depends only on the network, the
        minibatch order drawn from ``rng`` and ``learning_rate``.  The last
        iterate is split and kept if the training loss over all samples did
        not rise; otherwise the average of the iterates of the second half of
        the steps (less minibatch noise) is tried; if that rose too, the bond
        is left as it was.
        """
        stage = self.stages_[s]
        tt = stage.tt
        old_cores, old_params = (tt.cores[j], tt.cores[j + 1]), self._params()
        block0 = tt.merge(j)
        weights = {i: st.weight() for i, st in enumerate(self.stages_) if i != s}
        params = {k: v for k, v in old_params.items() if k in ("V", "b") or int(k[4:]) >= s}
        shard = self._shard
        n = shard.n_total
        steps = self._steps_per_bond(n)

        def gradients(idx, p):
            # the minibatches are drawn over all samples (the same order on every rank); each rank takes
            # the rows of its shard and the gradient sums are added across ranks
            mine = self._backend.asarray(idx[(idx >= shard.start) & (idx < shard.stop)] - shard.start)
            d_block, grads = self._batch_gradients(Z[mine], y_dev[mine], s, j, p["block"], {**old_params, **p},
                                                   weights, len(idx))
            if shard.comm.size > 1:
                d_block, grads = self._sum_over_ranks(d_block, grads, [k for k in p if k != "block"])
            return {"block": d_block, **grads}

        last, mean = minibatch_adam(Adam(learning_rate, xp=self._backend.xp), {"block": block0, **params}, gradients,
                                    lambda: rng.permutation(n), steps, self.batch_size, average_from=steps // 2)
        # the last iterate, or — when minibatch noise made it raise the loss — the average of the
        # second half's iterates (measured on Fashion-MNIST 60,000: 89.1% after two sweeps, against
        # 88.4% with the average tried first and 88.8% with the last iterate alone)
        for candidate in (last, mean):
            self._set_params({**old_params, **{k: v for k, v in candidate.items() if k != "block"}})
            info = tt.split(j, candidate["block"], direction, self._truncation(s))
            if shard.comm.size > 1:
                info = self._broadcast_bond(s, j, list(params), info)
            after = self._objective(Z, s, Y)
            if np.isfinite(after) and after <= loss_before:
                return info, after, True
        tt.cores[j], tt.cores[j + 1] = old_cores
        self._set_params(old_params)
        info = tt.split(j, block0, direction, Truncation(old_cores[0].shape[3]))  # exact: block0 has that rank
        return info, loss_before, False

    def _sum_over_ranks(self, d_block, grads, names):
        """The minibatch's gradient sums added over the ranks (one ``Allreduce``)."""
        be = self._backend
        parts = [d_block] + [grads[k] for k in names]
        flat = self._shard.sum(be.xp.concatenate([p.ravel() for p in parts]))
        out, start = [], 0
        for p in parts:
            out.append(flat[start : start + p.size].reshape(p.shape).astype(p.dtype))
            start += p.size
        return out[0], dict(zip(names, out[1:]))

    def _broadcast_bond(self, s, j, names, info):
        """Rank 0's split cores of bond ``j`` of stage ``s`` and its trained parameters on every rank."""
        from tnlearn.truncation import TruncationInfo

        be, comm, tt = self._backend, self._shard.comm, self.stages_[s].tt
        params = self._params()
        meta = np.array([info.kept, info.discarded_weight], dtype=np.float64)
        arrays = [meta, np.asarray(info.singular_values, dtype=np.float64), be.asnumpy(tt.cores[j]),
                  be.asnumpy(tt.cores[j + 1])] + [be.asnumpy(params[k]) for k in names]
        arrays = comm.bcast_arrays(arrays if comm.rank == 0 else [])
        tt.cores[j], tt.cores[j + 1] = be.asarray(arrays[2]), be.asarray(arrays[3])
        self._set_params({**params, **{k: be.asarray(a) for k, a in zip(names, arrays[4:])}})
        return TruncationInfo(kept=int(arrays[0][0]), discarded_weight=float(arrays[0][1]),
                              singular_values=arrays[1])

    # -- fitting ------------------------------------------------------------------------------------
    def _initialise(self, X, classes, backend, init_from=None):
        """Fresh stages, output layer, input statistics, history and sweep seed for validated ``X``.

        Nothing is assigned until everything is built, so a refused ``init_from``
        leaves the estimator as it was.
        """
        rng = np.random.default_rng(self.random_state)
        dtype = np.dtype(self.dtype)
        image_shape = image_geometry(X.shape[1], self.image_shape)
        L = len(classes)
        stages, n_in = self._build(image_shape, rng, dtype, backend)
        meta = {"model": "tn-cnn", "stages": self.stage_names(), "init": "random"}
        if init_from is None:
            V = backend.asarray((rng.standard_normal((n_in, L)) * np.sqrt(2.0 / n_in)).astype(dtype))
            b = backend.xp.zeros(L, dtype=dtype)
        else:
            stages, V, b, meta["compression"] = self._compress(stages, init_from, n_in, L, dtype, backend)
            meta["init"] = "dense"
        for st in stages:
            st.tt.orthogonalize(0)  # mixed-canonical gauge, centre at core 0, where a stage's sweep starts
        self.classes_, self.image_shape_ = classes, image_shape
        self.input_mean_ = float(X.mean())
        self.input_scale_ = float(X.std()) or 1.0
        self.stages_, self.V_, self.b_ = stages, V, b
        self.seed_ = int(rng.integers(2**62))  # seeds every sweep's minibatch order
        self.step_scale_ = 1.0  # halved by every rejected bond update, for the rest of the fit
        meta["n_params"] = self.n_params_
        self.history_ = History(meta=meta)

    def _compress(self, stages, layers, n_in, n_classes, dtype, backend):
        """TT-SVDs of a trained CNN's layers in place of ``stages`` (``fit(init_from=...)``).

        Returns ``(stages, V, b, report)``; the report gives per stage the
        ``relative_error``, ``ranks``, dense and TT parameters.
        """
        names = self.stage_names()
        pairs_ok = isinstance(layers, (list, tuple)) and all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in layers)
        if not pairs_ok or len(layers) != len(names) + 1:
            got = (f"{len(layers)} entries" if isinstance(layers, (list, tuple)) else f"a {type(layers).__name__}")
            want = [f"{name} ({st.kernel[0]}, {st.kernel[1]}, {st.c_in}, {st.c_out}) + ({st.c_out},)"
                    for name, st in zip(names, stages)] + [f"output ({n_in}, {n_classes}) + ({n_classes},)"]
            raise ValueError(f"init_from must be a list of {len(names) + 1} (weight, bias) pairs — "
                             f"{'; '.join(want)} — got {got}"
                             + ("" if pairs_ok or not isinstance(layers, (list, tuple))
                                else " that are not all (weight, bias) pairs"))
        report, compressed = {}, []
        for i, (name, stage, (W, b)) in enumerate(zip(names, stages, layers)):
            W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
            kh, kw = stage.kernel
            conv = name != "dense"
            want = (kh, kw, stage.c_in, stage.c_out) if conv else (kh * kw * stage.c_in, stage.c_out)
            if W.shape not in ((kh, kw, stage.c_in, stage.c_out), (kh * kw * stage.c_in, stage.c_out)) or \
                    b.shape != (stage.c_out,):
                what = ("(rows, columns, input channels, output channels)" if conv else
                        f"(inputs in (row, column, channel) order of the {kh}x{kw}x{stage.c_in} map, units)")
                raise ValueError(f"init_from {name}: weight {W.shape} and bias {b.shape} do not fit this stage: "
                                 f"pass a weight of shape {want} {what} and a bias of shape ({stage.c_out},)")
            fresh, info = TTConv.from_dense(W.reshape(-1, stage.c_out), b, stage.kernel, stage.tt.in_shape,
                                            stage.tt.out_shape, self._truncation(i).max_bond, self.cutoff,
                                            stage.stride, stage.padding, stage.pool, stage.relu, dtype, backend)
            compressed.append(fresh)
            report[name] = {"relative_error": info["relative_error"], "ranks": info["ranks"],
                            "dense_params": int(W.size + b.size), "tt_params": fresh.n_params}
        V, b = (np.asarray(a, dtype=np.float64) for a in layers[-1])
        if V.shape != (n_in, n_classes) or b.shape != (n_classes,):
            raise ValueError(f"init_from output layer: weight {V.shape} and bias {b.shape}; this network needs "
                             f"({n_in}, {n_classes}) and ({n_classes},)")
        return compressed, backend.asarray(V.astype(dtype)), backend.asarray(b.astype(dtype)), report

    def _check_continuation(self):
        """``warm_start``: the hyperparameters must still describe the fitted network (ValueError if not)."""
        n_conv = sum(name.startswith("conv") for name in self.history_.meta["stages"])  # the fitted stages' names
        convs, dense = self.stages_[:n_conv], self.stages_[n_conv:]
        fitted = {"channels": tuple(st.c_out for st in convs), "kernel_size": convs[0].kernel[0],
                  "stride": convs[0].stride, "pool_size": convs[0].pool,
                  "n_hidden": dense[0].c_out if dense else None}
        changed = [f"{k}={getattr(self, k)!r} (fitted: {v!r})" for k, v in fitted.items()
                   if (tuple(getattr(self, k)) if k == "channels" else getattr(self, k)) != v]
        if np.dtype(self.dtype) != self.stages_[0].tt.dtype:
            changed.append(f"dtype={self.dtype!r} (fitted: {self.stages_[0].tt.dtype.name!r})")
        if self.image_shape is not None and image_geometry(self.n_features_in_, self.image_shape) != self.image_shape_:
            changed.append(f"image_shape={self.image_shape!r} (fitted: {self.image_shape_!r})")
        for name, cap, group in (("conv_rank", self.conv_rank, convs), ("max_rank", self.max_rank, dense)):
            ranks = [r for st in group for r in st.bond_dims]
            if cap is not None and ranks and cap < max(ranks):
                changed.append(f"{name}={cap} is below the fitted TT-ranks {ranks}")
        if changed:
            raise ValueError(f"warm_start=True continues the fitted network, but {'; '.join(changed)}: restore "
                             "those settings, or fit anew with warm_start=False (to shrink a trained network's "
                             "ranks, pass its layers as init_from)")

    def _continuation_data(self, X, y):
        """``warm_start``: ``X`` and labels checked against the fitted model; returns ``(X, y_idx)``."""
        self._check_continuation()
        X = self._validate_X(X, reset=False)
        y = np.asarray(y).reshape(-1)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} samples and y {len(y)} labels; pass one label per sample")
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"warm_start: y has classes {unknown.tolist()} unseen in the first fit; refit with "
                             "warm_start=False to learn a new set of classes")
        return X, np.searchsorted(self.classes_, y)

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, X, y, eval_set=None, on_sweep=None, init_from=None, comm=None):
        """Train by sweeps over every stage's TT cores, bottom up.

        Parameters
        ----------
        X : array-like, shape (n_samples, H * W * channels)
            Flattened images, row-major, channels last (any range: centred and
            scaled by the training pixels' mean and standard deviation).
        y : array-like, shape (n_samples,)
        eval_set : tuple (X_test, y_test), optional
            Scored after every sweep (``history_[k].test_accuracy``).
        on_sweep : callable, optional
            Called as ``on_sweep(self)`` after every sweep.
        init_from : list of (weight, bias) pairs, optional
            Start from a trained CNN of the same architecture instead of random
            cores (the bottom-up path: compress a trained network, then re-tune
            it by sweeps).  One pair per stage — convolutions with weights of
            shape ``(k, k, c_in, c_out)``, the dense layer ``(H' W' c, n_hidden)``
            with its inputs in ``(row, column, channel)`` order — and the output
            layer ``(n_inputs, n_classes)``, all acting on the centred, scaled
            images ``(X - X.mean()) / X.std()`` with zero padding.  Each stage
            is compressed by TT-SVD at ``conv_rank`` / ``max_rank`` and
            ``cutoff``; ``history_.meta["compression"]`` reports the relative
            error and ranks per stage, ``history_.meta["compressed"]`` the
            loss and accuracies of the compressed network before the sweeps.
        comm : "mpi", mpi4py communicator or tnlearn.distributed communicator, optional
            Train data-parallel over this communicator's ranks (every rank
            calls ``fit`` with the same data): each rank holds a contiguous
            shard of the samples, every minibatch is drawn over all samples
            alike, its gradient sums are added across ranks (one ``Allreduce``
            per Adam step) and rank 0's split is broadcast after every bond,
            so ``K`` ranks train the network one process trains, to rounding.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            For images that do not match ``image_shape`` or are too small for the
            stages, and for ``init_from`` layers whose shapes do not fit.
        """
        self._check_params()
        continuing = self.warm_start and hasattr(self, "stages_")
        if continuing and init_from is not None:
            raise ValueError("init_from starts a new network, and warm_start=True continues the fitted one: "
                             "set warm_start=False to start from init_from")
        if continuing:
            X, y_idx = self._continuation_data(X, y)
        else:
            X, classes, y_idx = self._validate_Xy(X, y)
        eval_set = self._validate_eval_set(eval_set)
        backend = self._backend = get_backend(self.backend) if not continuing else self._backend
        xp = backend.xp
        comm = get_comm(comm)
        if comm.size > 1:
            check_same_data(comm, X, y_idx)
        if not continuing:
            self._initialise(X, classes, backend, init_from)
            if comm.size > 1:  # rank 0's start (a random_state of None draws differently on every rank)
                self._broadcast_network(comm)
        self._note_training_data(X, y_idx, continuing)
        self._shard = shard = make_shard(comm, len(X), backend)
        X, y_idx = X[shard.start : shard.stop], y_idx[shard.start : shard.stop]
        L = len(self.classes_)
        dtype = self.stages_[0].tt.dtype
        Z0 = self._prepare(X, xp)
        Y = backend.asarray(np.eye(L, dtype=dtype)[y_idx])
        y_dev = backend.asarray(y_idx)
        eval_data = None if eval_set is None else (self._prepare(eval_set[0], xp), eval_set[1])
        names = self.stage_names()
        if init_from is not None:  # the compressed network, before the sweeps re-tune it
            self.history_.meta["compressed"] = self._evaluate(Z0, Y, y_idx, eval_data)

        recorded_before = len(self.history_)

        def one_sweep():
            number = len(self.history_) + 1
            learning_rate = self.learning_rate * self.lr_decay ** (number - 1) * self.step_scale_
            # each sweep's minibatch orders come from its own generator: a resumed run draws the same ones
            rng = np.random.default_rng([self.seed_, number])
            t0 = time.perf_counter()
            schedules = [bond_sequence(st.tt.n_cores, "both") for st in self.stages_]
            bar = None
            if self.verbose >= 2 and self._shard.is_root:
                from tqdm.auto import tqdm

                bar = tqdm(total=sum(map(len, schedules)), desc=f"sweep {number}", unit="bond", leave=False)
            errors, stages, rejected = [], {}, 0
            # the loss the previous sweep of this fit recorded is this network's on these samples
            loss = self._last_loss() if len(self.history_) > recorded_before else None
            for s, schedule in enumerate(schedules):
                ts = time.perf_counter()
                Z = self._stage_inputs(Z0, s)
                loss = self._objective(Z, s, Y) if loss is None else loss
                before, stage_errors, stage_rejected = loss, [], 0
                for j, direction in schedule:
                    info, loss, accepted = self._update_bond(s, j, direction, Z, Y, y_dev, rng, learning_rate, loss)
                    stage_errors.append(float(info.discarded_weight))
                    if not accepted:  # the step was too long: halve it for the rest of the fit
                        stage_rejected += 1
                        self.step_scale_ *= 0.5
                        learning_rate *= 0.5
                    if bar is not None:
                        bar.update()
                del Z
                errors += stage_errors
                rejected += stage_rejected
                stages[names[s]] = {"bond_dims": self.stages_[s].bond_dims, "loss_before": before,
                                    "loss_after": loss, "max_truncation_error": max(stage_errors),
                                    "seconds": time.perf_counter() - ts, "rejected_updates": stage_rejected,
                                    "n_params": self.stages_[s].n_params,
                                    "dense_params": self.stages_[s].dense_params}
            if bar is not None:
                bar.close()
            return self._record(Z0, Y, y_idx, eval_data, errors, stages, rejected, time.perf_counter() - t0)

        def snapshot():
            cores = [list(st.tt.cores) for st in self.stages_]
            params, scale = self._params(), self.step_scale_

            def restore():
                for st, c in zip(self.stages_, cores):
                    st.tt.cores = c
                self._set_params(params)
                self.step_scale_ = scale
            return restore

        try:
            self._sweep_loop(self.n_sweeps, one_sweep, snapshot, on_sweep)
        finally:
            del self._shard  # training state: holds the communicator
        return self

    def _broadcast_network(self, comm):
        """Every stage's cores and bias, the output layer and the sweep seed as rank 0 has them."""
        be = self._backend
        arrays = [np.array([self.seed_], dtype=np.int64), be.asnumpy(self.V_), be.asnumpy(self.b_)]
        for st in self.stages_:
            arrays += [be.asnumpy(st.bias)] + [be.asnumpy(c) for c in st.tt.cores]
        arrays = comm.bcast_arrays(arrays if comm.rank == 0 else [])
        self.seed_ = int(arrays[0][0])
        self.V_, self.b_ = be.asarray(arrays[1]), be.asarray(arrays[2])
        pos = 3
        for st in self.stages_:
            st.bias = be.asarray(arrays[pos])
            st.tt.cores = [be.asarray(a) for a in arrays[pos + 1 : pos + 1 + st.tt.n_cores]]
            pos += 1 + st.tt.n_cores

    def _prepare(self, X, xp, dtype=None):
        """Centred, scaled images ``(n, H, W, c)`` on the backend."""
        dtype = self.stages_[0].tt.dtype if dtype is None else dtype
        Xc = ((np.asarray(X, dtype=np.float64) - self.input_mean_) / self.input_scale_).astype(dtype)
        return self._backend.asarray(Xc.reshape((len(X),) + tuple(self.image_shape_)))

    def _evaluate(self, Z0, Y, y_idx, eval_data):
        """``{"loss", "train_accuracy", "test_accuracy"}`` of the current network (test: None without eval data)."""
        from tnlearn.sweeps import training_loss

        xp, shard = self._backend.xp, self._shard
        f = self._logits_from(Z0, 0)
        loss = training_loss(f, Y, "cross_entropy", xp) * shard.n_local
        hits = np.sum(self._backend.asnumpy(xp.argmax(f, axis=1)) == y_idx, dtype=np.float64)
        loss, hits = shard.comm.allreduce_sum(np.array([loss, hits]))
        result = {"loss": float(loss) / shard.n_total, "train_accuracy": float(hits) / shard.n_total,
                  "test_accuracy": None}
        if eval_data is not None:
            scores = self._backend.asnumpy(self._logits_from(eval_data[0], 0))
            result["test_accuracy"] = float(np.mean(self.classes_[np.argmax(scores, axis=1)] == eval_data[1]))
        return result

    def _record(self, Z0, Y, y_idx, eval_data, errors, stages, rejected, seconds):
        scores = self._evaluate(Z0, Y, y_idx, eval_data)
        loss, train_acc, test_acc = scores["loss"], scores["train_accuracy"], scores["test_accuracy"]
        reason = divergence(self._last_loss(), loss, DIVERGENCE_RISE)
        if reason is not None:
            warn_diverged(type(self).__name__, len(self.history_) + 1, reason,
                          "lower learning_rate (e.g. learning_rate=1e-3) or use dtype='float64'")
            return None
        ranks = [r for st in self.stages_ for r in st.bond_dims]
        record = SweepRecord.from_splits(len(self.history_) + 1, loss, train_acc, test_acc, errors, ranks, seconds,
                                         stages, rejected_updates=rejected, data_loss=loss, n_params=self.n_params_)
        self.history_.append(record)
        if self.verbose and self._shard.is_root:
            per_stage = "  ".join(f"{k} {v['bond_dims']}" for k, v in stages.items())
            print(f"{record.headline()}  ranks {per_stage}  params {self.n_params_}  {seconds:.1f} s", flush=True)
        return record

    # -- prediction ---------------------------------------------------------------------------------
    def _scores(self, X):
        """Logits, shape (n_samples, n_classes), float64 (host), whatever the training dtype."""
        be = self._backend
        weights = {}
        for i, st in enumerate(self.stages_):  # the kernel matrices contracted from float64 cores
            tt = TTMatrix([c.astype(np.float64) for c in st.tt.cores], be)
            weights[i] = tt.block_dense(0, tt.merge(0))
        params = {k: v.astype(np.float64) for k, v in self._params().items()}
        return be.asnumpy(self._logits_from(self._prepare(X, be.xp, np.float64), 0, weights, params))

    def predict_proba(self, X):
        """Softmax of the logits, shape (n_samples, n_classes)."""
        self._check_fitted()
        return softmax(self._scores(self._validate_X(X, reset=False)), np)

    # -- size and files ------------------------------------------------------------------------------
    @property
    def n_params_(self):
        """Trained parameters: every stage's TT cores and bias, the output layer."""
        return int(sum(st.n_params for st in self.stages_) + self.V_.size + self.b_.size)

    @property
    def size_label(self):
        """``"channels 16-32, TT-rank 8"`` (without a dense TT layer: ``"channels 16-32"``)."""
        label = f"channels {'-'.join(map(str, self.channels))}"
        return label if self.n_hidden is None else f"{label}, TT-rank {self.max_rank}"

    def _get_state(self):
        be = self._backend
        arrays = {"V": be.asnumpy(self.V_), "b": be.asnumpy(self.b_)}
        geometry = []
        for i, st in enumerate(self.stages_):
            arrays[f"stage{i}_bias"] = be.asnumpy(st.bias)
            arrays.update({f"stage{i}_core{k}": be.asnumpy(c) for k, c in enumerate(st.tt.cores)})
            geometry.append({"n_cores": st.tt.n_cores, "kernel": list(st.kernel), "stride": st.stride,
                             "padding": st.padding, "pool": st.pool, "relu": st.relu})
        header = {"stages": geometry, "image_shape": list(self.image_shape_), "input_mean": self.input_mean_,
                  "input_scale": self.input_scale_, "seed": self.seed_, "step_scale": self.step_scale_}
        return header, arrays

    def _set_state(self, header, arrays, backend):
        for key in ("channels", "image_shape"):  # JSON lists back to tuples
            if getattr(self, key) is not None:
                setattr(self, key, tuple(getattr(self, key)))
        self._check_params()
        dtype = np.dtype(self.dtype)
        geometry = header["stages"]
        shape = image_geometry(self.n_features_in_, header["image_shape"])
        if not isinstance(geometry, list) or len(geometry) != len(self.stage_names()):
            raise ValueError(f"the file has {len(geometry) if isinstance(geometry, list) else geometry!r} stages; "
                             f"channels={self.channels} and n_hidden={self.n_hidden} make {len(self.stage_names())}")
        stages = []
        for i, g in enumerate(geometry):
            n_cores = header_int(g, "n_cores")
            cores = [arrays[f"stage{i}_core{k}"] for k in range(n_cores)]
            for k, core in enumerate(cores):
                check_finite_floats(f"stage{i}_core{k}", core, 4, dtype)
            bias = arrays[f"stage{i}_bias"]
            check_finite_floats(f"stage{i}_bias", bias, 1, dtype)
            kernel = g["kernel"]
            if not (isinstance(kernel, list) and len(kernel) == 2
                    and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in kernel)):
                raise ValueError(f"stage {i}: kernel={kernel!r} must be a pair [kh, kw] of integers >= 1")
            if not isinstance(g["relu"], bool):
                raise ValueError(f"stage {i}: relu={g['relu']!r} must be true or false")
            stage = TTConv(TTMatrix(cores, backend), backend.asarray(bias), tuple(kernel), header_int(g, "stride"),
                           header_int(g, "padding"), header_int(g, "pool"), g["relu"])
            if stage.c_in != shape[2]:
                raise ValueError(f"stage {i} takes {stage.c_in} channels but its input has {shape[2]}")
            shape = stage.output_shape(shape)
            stages.append(stage)
        V, b = arrays["V"], arrays["b"]
        check_finite_floats("V", V, 2, dtype)
        check_finite_floats("b", b, 1, dtype)
        if V.shape != (math.prod(shape), len(self.classes_)) or b.shape != (len(self.classes_),):
            raise ValueError(f"the output layer has shapes V {V.shape}, b {b.shape}; the stages give "
                             f"{math.prod(shape)} features and there are {len(self.classes_)} classes")
        self._backend = backend
        self.stages_ = stages
        self.image_shape_ = image_geometry(self.n_features_in_, header["image_shape"])
        self.input_mean_ = header_float(header, "input_mean")
        self.input_scale_ = header_float(header, "input_scale")
        if not self.input_scale_ > 0:
            raise ValueError(f"input_scale={self.input_scale_} must be positive")
        self.V_, self.b_ = backend.asarray(V), backend.asarray(b)
        self.seed_ = header_int(header, "seed")
        self.step_scale_ = header_float(header, "step_scale")
        if not 0 < self.step_scale_ <= 1:
            raise ValueError(f"step_scale={self.step_scale_} must be in (0, 1]")
