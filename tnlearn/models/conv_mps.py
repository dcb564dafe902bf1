"""conv-mps: a tensor-network conv stage under an MPS classifier head, trained by sweeps.

::

    image (H x W) --[conv MPS over each p x p patch, c channels, normalised]--> H' x W' grid of c-vectors
                  --[MPS head with a label index, physical dimension c]--> class scores

Every sweep first sweeps the head (the Stoudenmire–Schwab engine of
:mod:`tnlearn.sweeps`, on the conv features), then — from sweep
``conv_start`` on — sweeps the conv MPS's bonds with the head fixed
(:func:`tnlearn.stages.conv_sweeps.conv_half_sweep`: gradient back-propagated from
the head through the normalisation, summed over all samples and patches, a
backtracking step, truncated-SVD split).  The conv MPS starts as
average pooling followed by the feature map, plus principal-component detail
channels (:func:`tnlearn.stages.conv.pooled_conv_cores`).
"""

from __future__ import annotations

import math
import time

import numpy as np

from tnlearn.backend import get_backend, resolve_chunk_size
from tnlearn.embeddings import get_feature_map
from tnlearn.history import History, SweepRecord
from sklearn.utils._param_validation import StrOptions

from tnlearn.models import _constraints as C
from tnlearn.models._base import TNClassifier
from tnlearn.models._state import check_mps_cores, header_float, header_int
from tnlearn.models._validation import check_chunk_size, check_dtype, check_positive_int
from tnlearn.networks import LABEL_IND, head_to_quimb
from tnlearn.solvers import SolverOptions
from tnlearn.models._training import HeadSnapshot, divergence, warn_diverged
from tnlearn.stages.conv_sweeps import ConvSweepOptions, conv_half_sweep
from tnlearn.stages.conv import ConvStage, extract_patches, patch_grid, patch_sites, pca_conv_cores, pooled_conv_cores
from tnlearn.stages.mps import MPSHead, pca_init_cores
from tnlearn.sweeps import SweepOptions, build_environments, center_outputs, full_sweep, training_loss
from tnlearn.truncation import check_truncation_args

CHANNEL_IND = "channel"


def exact_conv_bond(n_sites, d, n_channels):
    """Largest bond an exact conv MPS needs anywhere, wherever its channel index sits.

    Bond ``i`` (sites ``< i`` on its left) has dimension at most
    ``min(c d^i, d^(q-i))`` with the channel index on its left and
    ``min(d^i, c d^(q-i))`` with it on its right.
    """
    return max(
        max(min(n_channels * d**i, d ** (n_sites - i)), min(d**i, n_channels * d ** (n_sites - i)))
        for i in range(1, n_sites)
    )


def _image_shape(n_features, image_shape):
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 2 or math.prod(shape) != n_features:
            raise ValueError(f"image_shape={image_shape} does not hold {n_features} features; pass (H, W) with H*W = {n_features}")
        return shape
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise ValueError(f"X has {n_features} features, not a square image; pass image_shape=(H, W)")
    return side, side


class ConvMPSClassifier(TNClassifier):
    """A conv MPS shared over image patches feeding an MPS classifier head.

    Parameters
    ----------
    patch : int, default=2
        Patch side ``p``; the conv MPS has ``p * p`` sites.
    stride : int, optional
        Default ``patch`` (non-overlapping patches).
    n_channels : int, default=4
        Output channels ``c`` of the conv stage = physical dimension of the head.
    conv_bond : int, optional
        Maximum conv bond dimension (default: exact, :func:`exact_conv_bond`:
        no truncation, 8 for 2x2 patches with ``d = 2`` and 4 channels).
    max_bond : int, default=16
        Maximum bond dimension of the head.
    cutoff : float, default=1e-10
    n_sweeps : int, default=4
    conv_start : int, default=1
        First sweep (1-based) that also sweeps the conv stage; ``n_sweeps + 1``
        keeps it at its initialisation.
    n_iter : int, default=1
        Head: preconditioned gradient steps per bond.
    damping : float, default=0.3
    init : {"pooled", "pca"}, default="pooled"
        Start of the conv MPS: ``"pooled"`` fits average pooling followed by the
        feature map (so the model starts where a plain MPS on pooled images
        starts) and adds principal-component detail channels
        (:func:`~tnlearn.stages.conv.pooled_conv_cores`); ``"pca"``: the
        leading principal components of the patch states
        (:func:`~tnlearn.stages.conv.pca_conv_cores`).
    image_shape : tuple (H, W), optional
        Default: square images.
    feature_map : str, default="trig"
    dtype : {"float32", "float64"}
    chunk_size : int or "auto", default="auto"
    backend : str, default="numpy"
    random_state : int, Generator or None
    verbose : int

    Attributes
    ----------
    conv_ : ConvStage
        ``conv_.net`` is the conv MPS (an :class:`~tnlearn.stages.mps.MPSHead`).
    head_ : MPSHead
    mps_ : quimb.tensor.MatrixProductState
        The head, label index ``"label"`` (as :class:`MPSClassifier`).
    conv_mps_ : quimb.tensor.MatrixProductState
        The conv MPS, output index ``"channel"``, site indices ``k0 .. k{p*p-1}``
        (the pixels of a patch in raster order).
    history_ : History
        ``bond_dims`` / truncation errors of the head; ``stages["conv"]`` of the conv stage.
    """

    def __init__(
        self,
        patch=2,
        stride=None,
        n_channels=4,
        conv_bond=None,
        max_bond=16,
        cutoff=1e-10,
        n_sweeps=4,
        conv_start=1,
        n_iter=1,
        damping=0.3,
        init="pooled",
        image_shape=None,
        feature_map="trig",
        dtype="float32",
        chunk_size="auto",
        backend="numpy",
        random_state=None,
        verbose=0,
    ):
        self.patch = patch
        self.stride = stride
        self.n_channels = n_channels
        self.conv_bond = conv_bond
        self.max_bond = max_bond
        self.cutoff = cutoff
        self.n_sweeps = n_sweeps
        self.conv_start = conv_start
        self.n_iter = n_iter
        self.damping = damping
        self.init = init
        self.image_shape = image_shape
        self.feature_map = feature_map
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose

    _parameter_constraints = {
        **C.COMMON,
        "patch": C.POSITIVE_INT, "stride": [*C.POSITIVE_INT, None], "n_channels": C.POSITIVE_INT,
        "conv_bond": [*C.POSITIVE_INT, None], "max_bond": C.POSITIVE_INT, "cutoff": C.NON_NEGATIVE,
        "n_sweeps": C.POSITIVE_INT, "conv_start": C.POSITIVE_INT, "n_iter": C.POSITIVE_INT, "damping": C.POSITIVE,
        "init": [StrOptions({"pooled", "pca"})], "image_shape": [tuple, list, None], "feature_map": C.FEATURE_MAP,
        "chunk_size": C.CHUNK_SIZE,
    }

    def _check_params(self, n_features):
        self._validate_hyperparameters()
        check_truncation_args(self.max_bond, self.cutoff, "rsum2")
        check_chunk_size(self.chunk_size)
        for name in ("patch", "n_channels", "n_sweeps", "conv_start", "n_iter"):
            check_positive_int(name, getattr(self, name))
        if self.conv_bond is not None:
            check_positive_int("conv_bond", self.conv_bond)
        check_dtype(self.dtype)
        if self.init not in ("pooled", "pca"):
            raise ValueError(f"init={self.init!r} is not known; choose 'pooled' or 'pca'")
        if self.patch < 2:
            raise ValueError("patch=1 makes the conv stage a per-pixel map; use patch >= 2 (or MPSClassifier)")
        width = get_feature_map(self.feature_map).dim ** (self.patch * self.patch)
        if self.n_channels > width:
            raise ValueError(
                f"n_channels={self.n_channels} exceeds the {width} dimensions of a {self.patch}x{self.patch} "
                f"patch's product state; use n_channels <= {width}"
            )
        shape = _image_shape(n_features, self.image_shape)
        stride = self.patch if self.stride is None else self.stride
        grid = patch_grid(shape, self.patch, stride)
        if grid[0] * grid[1] < 2:
            raise ValueError(f"patch={self.patch}, stride={stride} leave {grid[0] * grid[1]} patch of {shape} images; the head needs >= 2")
        return shape, stride

    def _patches(self, X, backend, out_of_domain):
        conv = self.conv_  # the fitted geometry, whatever set_params did since
        images = np.asarray(X).reshape((len(X),) + conv.image_shape)
        return patch_sites(images, conv.patch, conv.stride, conv.feature_map, conv.dtype, backend, out_of_domain)

    # -- fitting ---------------------------------------------------------------------
    def fit(self, X, y, eval_set=None, on_sweep=None):
        """Train head and conv stage by sweeps.

        Parameters
        ----------
        X : array-like, shape (n_samples, H * W)
            Flattened images in the feature map's domain (``[0, 1]`` for ``"trig"``).
        y : array-like, shape (n_samples,)
        eval_set : tuple (X_test, y_test), optional
        on_sweep : callable, optional
            Called as ``on_sweep(self)`` after every sweep (e.g. to save a checkpoint).

        Returns
        -------
        self
        """
        X, classes, y_idx = self._validate_Xy(X, y)
        image_shape, stride = self._check_params(X.shape[1])
        eval_set = self._validate_eval_set(eval_set)
        rng = np.random.default_rng(self.random_state)
        backend = get_backend(self.backend)
        chunk_size = resolve_chunk_size(self.chunk_size, backend)
        dtype = np.dtype(self.dtype)
        d = get_feature_map(self.feature_map).dim
        conv_bond = self.conv_bond or exact_conv_bond(self.patch**2, d, self.n_channels)
        order = rng.permutation(len(X))
        X, y_idx = X[order], y_idx[order]
        n = len(X)
        self.classes_ = classes
        images = X.reshape((n,) + image_shape)
        phi_patch = patch_sites(images, self.patch, stride, self.feature_map, dtype, backend, "raise")
        if self.init == "pooled":
            pixels = extract_patches(images, self.patch, stride).transpose(1, 0, 2).reshape(-1, self.patch**2)
            net = pooled_conv_cores(phi_patch, pixels, self.n_channels, self.feature_map, backend, max_bond=conv_bond)
        else:
            net = pca_conv_cores(phi_patch, self.n_channels, conv_bond, rng, backend)
        self.conv_ = conv = ConvStage(net, self.patch, stride, image_shape, self.feature_map)
        with backend.host_threads():  # the features, the head's PCA start and environments: shared passes
            v_sites = conv.features(phi_patch, n)
            onehot = np.zeros((n, len(classes)), dtype=dtype)
            onehot[np.arange(n), y_idx] = 1
            Y = backend.asarray(onehot)
            cores, log_norm = pca_init_cores(v_sites, len(classes), self.max_bond, rng, backend, chunk_size, targets=Y)
            self.head_ = head = MPSHead(cores, 0, log_norm, backend)
            head_opts = SweepOptions(
                max_bond=self.max_bond, cutoff=self.cutoff,
                # the head's settings of the measured conv-mps runs (README tables): line search on
                # 8192 samples, Grams on all of them
                solver=SolverOptions("gd", "mse", self.n_iter, "auto", 8192, True, float(self.damping),
                                     gram_samples=None),
                chunk_size=chunk_size, truncation="data", normalize_samples=True,
            )
            conv_opts = ConvSweepOptions(max_bond=conv_bond, cutoff=self.cutoff)
            conv_width = max(conv_bond, max(net.bond_dims))
            eval_patches = None
            if eval_set is not None:
                eval_patches = (self._patches(eval_set[0], backend, "clip"), eval_set[1])
            self.history_ = History(meta={"model": "conv-mps", "patch": self.patch, "stride": stride,
                                          "n_channels": self.n_channels, "grid": list(conv.grid)})
            steps = {}
            state = {"envs": build_environments(head, v_sites, head_opts), "v_sites": v_sites}

        def one_sweep():
            sweep = len(self.history_) + 1
            t0 = time.perf_counter()
            infos = full_sweep(head, state["envs"], state["v_sites"], Y, head_opts)  # leaves the right envs valid
            conv_record = {}
            if sweep >= self.conv_start:
                state["envs"] = None  # stale once the conv stage moves; free them while it sweeps
                t1 = time.perf_counter()
                cenvs = build_environments(net, phi_patch, SweepOptions(max_bond=conv_width, chunk_size=conv_opts.chunk_size))
                cinfos, losses = conv_half_sweep(conv, cenvs, phi_patch, head, Y, head_opts, conv_opts, "right", steps)
                more, more_losses = conv_half_sweep(conv, cenvs, phi_patch, head, Y, head_opts, conv_opts, "left", steps)
                del cenvs
                cinfos, losses = cinfos + more, losses + more_losses
                state["v_sites"] = conv.features(phi_patch, n)
                state["envs"] = build_environments(head, state["v_sites"], head_opts)
                errors = [i.discarded_weight for i in cinfos]
                conv_record = {
                    "bond_dims": net.bond_dims,
                    "max_truncation_error": float(max(errors)),
                    "loss_before": float(losses[0][0]),
                    "loss_after": float(losses[-1][1]),
                    "seconds": time.perf_counter() - t1,
                }
            record = self._record(sweep, head, state["envs"], state["v_sites"], Y, y_idx, infos, conv_record,
                                  head_opts, eval_patches, time.perf_counter() - t0)
            return record

        def snapshot():  # both stages as they were before the sweep
            head_before, net_before, v_before = HeadSnapshot.of(head), HeadSnapshot.of(net), state["v_sites"]

            def restore():
                head_before.restore(head)
                net_before.restore(net)
                state["v_sites"] = v_before
            return restore

        with backend.host_threads():  # the passes over the samples share the host's cores
            self._sweep_loop(self.n_sweeps, one_sweep, snapshot, on_sweep)
        return self

    def _record(self, sweep, head, envs, v_sites, Y, y_idx, infos, conv_record, head_opts, eval_patches, seconds):
        """Append the sweep's record and return it; None (after a warning) when the sweep diverged."""
        loss_before = self._last_loss()
        xp = head.backend.xp
        f = center_outputs(head, envs, v_sites, head_opts.chunk_size, normalized=True)
        loss = training_loss(f, Y, "mse", xp)
        reason = divergence(loss_before, loss)
        if reason is not None:
            warn_diverged(type(self).__name__, sweep, reason)
            return None
        train_acc = float(np.mean(head.backend.asnumpy(xp.argmax(f, axis=1)) == y_idx))
        if self._lost_accuracy(sweep, train_acc):  # the loss fell but the classifier got worse
            return None
        test_acc = None
        if eval_patches is not None:
            scores = self._patch_scores(eval_patches[0], len(eval_patches[1]))
            test_acc = float(np.mean(self.classes_[np.argmax(scores, axis=1)] == eval_patches[1]))
        errors = [i.discarded_weight for i in infos]
        record = SweepRecord.from_splits(
            sweep, loss, train_acc, test_acc, errors, head.bond_dims, seconds,
            stages={"conv": conv_record} if conv_record else {},
        )
        self.history_.append(record)
        if self.verbose:
            conv = ""
            if conv_record:
                conv = f"  conv loss {conv_record['loss_before']:.5f} -> {conv_record['loss_after']:.5f}"
            print(f"{record.headline()}{conv}  max bond {max(record.bond_dims)}  {seconds:.2f} s", flush=True)
        return record

    # -- prediction -------------------------------------------------------------------
    def _scores(self, X):
        """The head's normalised outputs (what the sweeps fit), shape (n_samples, n_classes), float64."""
        return self._patch_scores(self._patches(X, self.head_.backend, "clip"), len(X))

    def _patch_scores(self, phi_patch, n):
        v_sites = self.conv_.features(phi_patch, n)
        return self.head_.decision_function(v_sites, resolve_chunk_size(self.chunk_size, self.head_.backend),
                                            normalized=True)

    # -- model files -------------------------------------------------------------------
    @property
    def size_label(self):
        """``"m=<max_bond>"`` (the head's bond dimension)."""
        return f"m={self.max_bond}"

    def _get_state(self):
        """The head (as :class:`MPSClassifier` saves it) and the conv MPS ``conv_core_0 ..`` with its geometry."""
        head, conv = self.head_, self.conv_
        header = {
            "n_sites": head.n_sites, "center": head.center, "log_norm": head.log_norm,
            "conv_n_sites": conv.net.n_sites, "conv_center": conv.net.center, "conv_log_norm": conv.net.log_norm,
            "conv_stride": conv.stride, "image_shape": list(conv.image_shape),
        }
        arrays = {f"core_{i}": head.backend.asnumpy(c) for i, c in enumerate(head.cores)}
        arrays.update({f"conv_core_{i}": conv.net.backend.asnumpy(c) for i, c in enumerate(conv.net.cores)})
        return header, arrays

    def _set_state(self, header, arrays, backend):
        if self.image_shape is not None:  # a JSON list back to a tuple
            self.image_shape = tuple(self.image_shape)
        n_features = self.n_features_in_
        want_shape, want_stride = self._check_params(n_features)
        image_shape = tuple(int(s) for s in header["image_shape"])
        stride = header_int(header, "conv_stride")
        if image_shape != want_shape:
            raise ValueError(f"image_shape {image_shape} disagrees with n_features_in={n_features} and the "
                             f"parameters ({want_shape})")
        if stride != want_stride:
            raise ValueError(f"conv_stride {stride} disagrees with the parameters (stride={self.stride}, "
                             f"patch={self.patch})")
        dtype = np.dtype(self.dtype)
        d = get_feature_map(self.feature_map).dim
        conv_center, conv_log = header_int(header, "conv_center"), header_float(header, "conv_log_norm")
        conv_cores = [arrays[f"conv_core_{i}"] for i in range(header_int(header, "conv_n_sites"))]
        check_mps_cores(conv_cores, conv_center, conv_log, self.patch**2, d, self.n_channels, "conv_core", dtype)
        conv = ConvStage(MPSHead(conv_cores, conv_center, conv_log, backend), self.patch, stride, image_shape,
                         self.feature_map)
        center, log_norm = header_int(header, "center"), header_float(header, "log_norm")
        cores = [arrays[f"core_{i}"] for i in range(header_int(header, "n_sites"))]
        check_mps_cores(cores, center, log_norm, conv.n_patches, self.n_channels, len(self.classes_), dtype=dtype)
        self.conv_, self.head_ = conv, MPSHead(cores, center, log_norm, backend)

    @property
    def mps_(self):
        self._check_fitted()
        return head_to_quimb(self.head_)

    @property
    def conv_mps_(self):
        self._check_fitted()
        return head_to_quimb(self.conv_.net).reindex({LABEL_IND: CHANNEL_IND})

    @property
    def n_params_(self):
        """Parameters of the head plus the (shared) conv MPS."""
        self._check_fitted()
        return int(self.head_.n_params + self.conv_.net.n_params)
