"""A tensor-train (MPO / TT-matrix) dense stage (Novikov et al. 2015).

A dense weight of shape ``(prod(in_shape), prod(out_shape))`` is stored as
``d`` cores ``G_k`` of shape ``(r_{k-1}, n_k, m_k, r_k)`` (``r_0 = r_d = 1``)::

    W[(i_1 .. i_d), (j_1 .. j_d)] = G_1[:, i_1, j_1, :] @ G_2[:, i_2, j_2, :] @ ... @ G_d[:, i_d, j_d, :]

with row-major multi-indices, so that ``Y = X @ W`` maps a batch ``X`` of shape
``(b, prod(in_shape))`` to ``(b, prod(out_shape))``.  The forward pass never
forms ``W``: it contracts the batch with the cores by one
``opt_einsum.contract_expression`` built once per shape and reused.

Two-site sweeps treat the TT like an MPS: :meth:`TTMatrix.merge` fuses cores
``j`` and ``j + 1`` into a block of shape ``(r_{j-1}, n_j, m_j, n_{j+1},
m_{j+1}, r_{j+1})``, :meth:`TTMatrix.block_gradient` contracts a batch's
upstream gradient with the other cores (the block's environments), and
:meth:`TTMatrix.split` cuts the updated block by truncated SVD, so the TT-rank
adapts.  :func:`tt_from_dense` is the TT-SVD that compresses a trained dense
layer, with the approximation error reported.
"""

from __future__ import annotations

import math

import numpy as np
import opt_einsum

from tnlearn.backend import get_backend
from tnlearn.truncation import Truncation, TruncationInfo, split_matrix


def _symbols(k):
    return [opt_einsum.get_symbol(i) for i in range(k)]


def check_tt_shapes(in_shape, out_shape):
    """Validate a factorisation: two equally long tuples of integers >= 1."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if len(in_shape) != len(out_shape) or len(in_shape) < 1:
        raise ValueError(
            f"in_shape {in_shape} and out_shape {out_shape} must have the same number (>= 1) of "
            "factors, one per TT core; e.g. in_shape=(4, 4, 4, 4, 4), out_shape=(4, 4, 4, 4, 4)"
        )
    for name, shape in (("in_shape", in_shape), ("out_shape", out_shape)):
        if any(isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 1 for f in shape):
            raise ValueError(f"{name}={shape}: every factor must be an integer >= 1")
    return tuple(int(f) for f in in_shape), tuple(int(f) for f in out_shape)


def factorize(n, n_factors):
    """Power-of-two factors of the smallest ``2**k >= n``, split near-evenly into ``n_factors``.

    The input is zero-padded to ``2**k`` (at least ``2**n_factors``), so every
    factor is a power of two: e.g. ``factorize(784, 5)`` gives ``(4, 4, 4, 4, 4)``
    (1024, the 28x28 image padded as in Novikov et al.), ``factorize(784, 2)``
    gives ``(32, 32)``.  Pass ``in_shape`` yourself for other factorisations.

    Parameters
    ----------
    n : int
    n_factors : int

    Returns
    -------
    tuple of int
    """
    if n < 1 or n_factors < 1:
        raise ValueError(f"factorize needs n >= 1 and n_factors >= 1, got {n}, {n_factors}")
    bits = max(1, math.ceil(math.log2(n)))
    bits = max(bits, n_factors)
    base, extra = divmod(bits, n_factors)
    return tuple(2 ** (base + (1 if i < extra else 0)) for i in range(n_factors))


class TTMatrix:
    """A dense layer ``Y = X @ W`` with ``W`` in tensor-train (MPO) form.

    Parameters
    ----------
    cores : list of arrays
        ``cores[k]`` has shape ``(r_{k-1}, n_k, m_k, r_k)`` with ``r_0 = r_d = 1``.
    backend : str or Backend, default="numpy"

    Attributes
    ----------
    in_shape, out_shape : tuple of int
    ranks : list of int
        The ``d - 1`` internal TT-ranks.
    """

    def __init__(self, cores, backend="numpy"):
        self.backend = get_backend(backend)
        cores = [self.backend.xp.ascontiguousarray(self.backend.asarray(c)) for c in cores]
        if not cores:
            raise ValueError("a TT-matrix needs at least one core")
        for k, c in enumerate(cores):
            if c.ndim != 4:
                raise ValueError(f"core {k} has shape {c.shape}; expected (r_left, n, m, r_right)")
        if cores[0].shape[0] != 1 or cores[-1].shape[3] != 1:
            raise ValueError("the first core's left rank and the last core's right rank must be 1")
        for k in range(len(cores) - 1):
            if cores[k].shape[3] != cores[k + 1].shape[0]:
                raise ValueError(
                    f"cores {k} and {k + 1} do not connect: right rank {cores[k].shape[3]} "
                    f"!= left rank {cores[k + 1].shape[0]}"
                )
        self.cores = cores
        self._expressions = {}

    # -- shape facts -----------------------------------------------------------------
    @property
    def n_cores(self):
        return len(self.cores)

    @property
    def n_sites(self):
        """Number of cores (the :class:`~tnlearn.stages.base.Stage` name for :attr:`n_cores`)."""
        return self.n_cores

    @property
    def bond_dims(self):
        """The TT-ranks (the :class:`~tnlearn.stages.base.Stage` name for :attr:`ranks`)."""
        return self.ranks

    @property
    def in_shape(self):
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def out_shape(self):
        return tuple(int(c.shape[2]) for c in self.cores)

    @property
    def in_features(self):
        return math.prod(self.in_shape)

    @property
    def out_features(self):
        return math.prod(self.out_shape)

    @property
    def ranks(self):
        return [int(c.shape[3]) for c in self.cores[:-1]]

    @property
    def n_params(self):
        """Number of stored weights, ``sum_k r_{k-1} n_k m_k r_k``."""
        return int(sum(c.size for c in self.cores))

    @property
    def compression(self):
        """Dense parameter count over TT parameter count (``prod n * prod m / n_params``)."""
        return self.in_features * self.out_features / self.n_params

    @property
    def dtype(self):
        return self.cores[0].dtype

    # -- construction ------------------------------------------------------------------
    @classmethod
    def random(cls, in_shape, out_shape, rank, rng, dtype=np.float32, backend="numpy", gain=2.0):
        """Random cores whose dense matrix has entries of variance ``gain / prod(in_shape)``.

        The He/Glorot-style scale of a dense layer, obtained by giving every core
        entries of variance ``(gain / N) ** (1/d) / r_{k-1}`` (``N = prod in_shape``).

        Parameters
        ----------
        in_shape, out_shape : tuple of int
        rank : int
            Maximum TT-rank (capped by the dimensions either side).
        rng : numpy.random.Generator
        dtype, backend
        gain : float

        Returns
        -------
        TTMatrix
        """
        in_shape, out_shape = check_tt_shapes(in_shape, out_shape)
        d = len(in_shape)
        sizes = [n * m for n, m in zip(in_shape, out_shape)]
        ranks = [1]
        for k in range(1, d):
            ranks.append(int(min(rank, math.prod(sizes[:k]), math.prod(sizes[k:]))))
        ranks.append(1)
        var_entry = (gain / math.prod(in_shape)) ** (1.0 / d)
        cores = [
            (rng.standard_normal((ranks[k], in_shape[k], out_shape[k], ranks[k + 1])) * np.sqrt(var_entry / ranks[k]))
            .astype(dtype)
            for k in range(d)
        ]
        return cls(cores, backend)

    # -- contraction ---------------------------------------------------------------------
    def _expression(self, key, equation, *shapes):
        full_key = (key, shapes)
        expr = self._expressions.get(full_key)
        if expr is None:
            expr = opt_einsum.contract_expression(equation, *shapes, optimize="auto")
            self._expressions[full_key] = expr
        return expr

    def _core_terms(self, skip=()):
        """Einsum terms of the cores (skipping indices in ``skip``), with their index letters."""
        d = self.n_cores
        sym = _symbols(3 * d + 2)
        ins, outs, bonds = sym[1 : d + 1], sym[d + 1 : 2 * d + 1], sym[2 * d + 1 : 3 * d + 2]
        terms = {k: bonds[k] + ins[k] + outs[k] + bonds[k + 1] for k in range(d) if k not in skip}
        return sym[0], ins, outs, bonds, terms

    def forward(self, X):
        """``X @ W`` for a batch, contracted core by core.

        Parameters
        ----------
        X : array, shape (b, prod(in_shape))

        Returns
        -------
        array, shape (b, prod(out_shape))
        """
        b = X.shape[0]
        if X.ndim != 2 or X.shape[1] != self.in_features:
            raise ValueError(f"X has shape {X.shape}; expected (n_samples, {self.in_features})")
        batch, ins, outs, _, terms = self._core_terms()
        eq = ",".join([batch + "".join(ins)] + [terms[k] for k in range(self.n_cores)]) + "->" + batch + "".join(outs)
        xin = X.reshape((b,) + self.in_shape)
        expr = self._expression("forward", eq, xin.shape, *(c.shape for c in self.cores))
        return expr(xin, *self.cores).reshape(b, self.out_features)

    def to_dense(self):
        """The represented matrix ``W``, shape ``(prod(in_shape), prod(out_shape))`` (host)."""
        be = self.backend
        w = be.asnumpy(self.cores[0])[0]  # (n, m, r)
        rows, cols = w.shape[0], w.shape[1]
        for core in self.cores[1:]:
            c = be.asnumpy(core)
            w = np.einsum("NMr,rnms->NnMms", w, c)
            rows, cols = rows * c.shape[1], cols * c.shape[2]
            w = w.reshape(rows, cols, c.shape[3])
        return w[:, :, 0]

    # -- two-site moves ----------------------------------------------------------------------
    def merge(self, j):
        """Merged block of cores ``(j, j+1)``, shape ``(r_{j-1}, n_j, m_j, n_{j+1}, m_{j+1}, r_{j+1})``."""
        self._check_bond(j)
        return self.backend.xp.einsum("anmr,rpqb->anmpqb", self.cores[j], self.cores[j + 1])

    def _check_bond(self, j):
        if not 0 <= j < self.n_cores - 1:
            raise ValueError(f"bond {j} does not exist: a {self.n_cores}-core TT has bonds 0..{self.n_cores - 2}")

    def _block_terms(self, j):
        batch, ins, outs, bonds, terms = self._core_terms(skip=(j, j + 1))
        block = bonds[j] + ins[j] + outs[j] + ins[j + 1] + outs[j + 1] + bonds[j + 2]
        others = [k for k in range(self.n_cores) if k not in (j, j + 1)]
        return batch, ins, outs, block, [terms[k] for k in others], others

    def block_forward(self, j, block, X):
        """``X @ W`` with cores ``j, j+1`` replaced by a merged ``block``.

        Parameters
        ----------
        j : int
        block : array, shape (r_{j-1}, n_j, m_j, n_{j+1}, m_{j+1}, r_{j+1})
        X : array, shape (b, prod(in_shape))

        Returns
        -------
        array, shape (b, prod(out_shape))
        """
        self._check_bond(j)
        batch, ins, outs, bterm, oterms, others = self._block_terms(j)
        eq = ",".join([batch + "".join(ins), bterm] + oterms) + "->" + batch + "".join(outs)
        xin = X.reshape((X.shape[0],) + self.in_shape)
        cores = [self.cores[k] for k in others]
        expr = self._expression(("bfwd", j), eq, xin.shape, block.shape, *(c.shape for c in cores))
        return expr(xin, block, *cores).reshape(X.shape[0], self.out_features)

    def block_gradient(self, j, X, dY):
        """Gradient of ``sum(dY * (X @ W))`` with respect to the merged block of bond ``j``.

        The block's environments are the input batch and the upstream gradient
        contracted with the other cores; one contraction, its path found once
        per shape by opt_einsum and reused.

        Parameters
        ----------
        j : int
        X : array, shape (b, prod(in_shape))
        dY : array, shape (b, prod(out_shape))

        Returns
        -------
        array, shape (r_{j-1}, n_j, m_j, n_{j+1}, m_{j+1}, r_{j+1})
        """
        self._check_bond(j)
        batch, ins, outs, bterm, oterms, others = self._block_terms(j)
        inputs = [batch + "".join(ins), batch + "".join(outs)] + oterms
        # the chain's boundary bonds (size 1) appear in no input: leave them out, reshape after
        present = set("".join(inputs))
        eq = ",".join(inputs) + "->" + "".join(ch for ch in bterm if ch in present)
        b = X.shape[0]
        xin = X.reshape((b,) + self.in_shape)
        gy = dY.reshape((b,) + self.out_shape)
        cores = [self.cores[k] for k in others]
        expr = self._expression(("bgrad", j), eq, xin.shape, gy.shape, *(c.shape for c in cores))
        shape = (self.cores[j].shape[0],) + self.cores[j].shape[1:3] + self.cores[j + 1].shape[1:]
        return expr(xin, gy, *cores).reshape(shape)

    def block_dense(self, j, block):
        """The dense matrix ``W`` with cores ``j, j+1`` replaced by a merged ``block``.

        For layers whose matrix is smaller than a minibatch's activations (the
        kernels of a convolution, applied at every pixel): forming ``W`` once
        per step and using one GEMM beats contracting every row with the cores.

        Parameters
        ----------
        j : int
        block : array, shape (r_{j-1}, n_j, m_j, n_{j+1}, m_{j+1}, r_{j+1})

        Returns
        -------
        array, shape (prod(in_shape), prod(out_shape)), on the backend
        """
        self._check_bond(j)
        _, ins, outs, bterm, oterms, others = self._block_terms(j)
        inputs = [bterm] + oterms
        eq = ",".join(inputs) + "->" + "".join(ins) + "".join(outs)
        cores = [self.cores[k] for k in others]
        # the chain's boundary bonds (size 1) are summed over, as in the TT product itself
        expr = self._expression(("bdense", j), eq, block.shape, *(c.shape for c in cores))
        return expr(block, *cores).reshape(self.in_features, self.out_features)

    def block_gradient_from_dense(self, j, dW):
        """Gradient with respect to the merged block of bond ``j`` of a loss whose gradient in ``W`` is ``dW``.

        The adjoint of :meth:`block_dense`: ``dW`` contracted with the other cores.

        Parameters
        ----------
        j : int
        dW : array, shape (prod(in_shape), prod(out_shape))

        Returns
        -------
        array, shape (r_{j-1}, n_j, m_j, n_{j+1}, m_{j+1}, r_{j+1})
        """
        self._check_bond(j)
        _, ins, outs, bterm, oterms, others = self._block_terms(j)
        inputs = ["".join(ins) + "".join(outs)] + oterms
        present = set("".join(inputs))
        eq = ",".join(inputs) + "->" + "".join(ch for ch in bterm if ch in present)
        cores = [self.cores[k] for k in others]
        g = dW.reshape(self.in_shape + self.out_shape)
        expr = self._expression(("bdgrad", j), eq, g.shape, *(c.shape for c in cores))
        shape = (self.cores[j].shape[0],) + self.cores[j].shape[1:3] + self.cores[j + 1].shape[1:]
        return expr(g, *cores).reshape(shape)

    def split(self, j, block, direction, truncation):
        """Cut a merged block back into two cores by truncated SVD.

        Parameters
        ----------
        j : int
        block : array, shape (r_{j-1}, n_j, m_j, n_{j+1}, m_{j+1}, r_{j+1})
        direction : {"right", "left"}
            ``"right"``: core ``j`` gets the left-orthonormal ``U`` and core
            ``j + 1`` gets ``S Vh`` (the sweep moves on to bond ``j + 1``);
            ``"left"``: core ``j`` gets ``U S``, core ``j + 1`` the
            right-orthonormal ``Vh``.
        truncation : Truncation
            ``max_bond`` (the maximum TT-rank), ``cutoff``, ``cutoff_mode``.

        Returns
        -------
        TruncationInfo
            ``discarded_weight`` relative to the block's squared norm.
        """
        self._check_bond(j)
        be = self.backend
        host = be.asnumpy(block)
        a, n1, m1, n2, m2, b = host.shape
        left, right, info = split_matrix(host.reshape(a * n1 * m1, n2 * m2 * b), direction, truncation)
        k = info.kept
        dtype = self.cores[j].dtype
        self.cores[j] = be.xp.ascontiguousarray(be.asarray(left.reshape(a, n1, m1, k).astype(dtype)))
        self.cores[j + 1] = be.xp.ascontiguousarray(be.asarray(right.reshape(k, n2, m2, b).astype(dtype)))
        return info

    def orthogonalize(self, center=0):
        """Bring the TT into mixed-canonical gauge around core ``center`` (``W`` unchanged, to rounding).

        Cores left of ``center`` become left-orthonormal and cores right of it
        right-orthonormal, by exact (untruncated) SVD splits of the merged
        pairs; the whole norm of ``W`` then sits in core ``center``, the
        gauge a two-site sweep keeps.

        Parameters
        ----------
        center : int
        """
        if not 0 <= center < self.n_cores:
            raise ValueError(f"center={center} is not a core of this {self.n_cores}-core TT")
        for j in range(self.n_cores - 2, center - 1, -1):
            self.split(j, self.merge(j), "left", Truncation(self.ranks[j]))
        for j in range(center):
            self.split(j, self.merge(j), "right", Truncation(self.ranks[j]))
        return self

    # -- interop -------------------------------------------------------------------------------
    def to_quimb(self, upper_ind_id="k{}", lower_ind_id="b{}", site_tag_id="I{}"):
        """The TT-matrix as a quimb ``MatrixProductOperator`` (host arrays).

        quimb's lower indices (``b{k}``) are the inputs ``n_k`` and the upper
        indices (``k{k}``) the outputs ``m_k``, so ``mpo.apply(mps)`` of an MPS
        with site indices ``k{k}`` is ``W.T`` applied to it, the same map as
        :meth:`forward` on a product vector.

        Returns
        -------
        quimb.tensor.MatrixProductOperator
        """
        import quimb.tensor as qtn

        arrays = [self.backend.asnumpy(c) for c in self.cores]
        if len(arrays) == 1:
            arrays = [arrays[0][0, :, :, 0]]
            return qtn.MatrixProductOperator(
                arrays, shape="du", upper_ind_id=upper_ind_id, lower_ind_id=lower_ind_id, site_tag_id=site_tag_id
            )
        arrays[0] = arrays[0][0]
        arrays[-1] = arrays[-1][..., 0]
        return qtn.MatrixProductOperator(
            arrays, shape="ldur", upper_ind_id=upper_ind_id, lower_ind_id=lower_ind_id, site_tag_id=site_tag_id
        )


def tt_from_dense(W, in_shape, out_shape, max_bond=None, cutoff=0.0, cutoff_mode="rsum2", dtype=None, backend="numpy"):
    """Compress a dense matrix into a TT-matrix by TT-SVD (sequential truncated SVDs).

    Parameters
    ----------
    W : array_like, shape (prod(in_shape), prod(out_shape))
        Integers are converted to floating point.
    in_shape, out_shape : tuple of int
    max_bond : int or None
        Maximum TT-rank.
    cutoff : float
        Per-split truncation threshold (``cutoff_mode`` as
        :func:`tnlearn.truncation.truncated_svd`).
    dtype : numpy dtype, optional
        Of the cores (default: ``W``'s floating type; float64 for integer ``W``).
    backend : str or Backend

    Returns
    -------
    tt : TTMatrix
    info : dict
        ``relative_error`` (``||W - W_tt||_F / ||W||_F``, computed exactly,
        after the cast of the cores to ``dtype``), ``error_bound``
        (``sqrt(sum of the discarded relative weights)``, the TT-SVD guarantee
        in exact arithmetic: a float32 cast adds ~1e-7 on top of it), ``ranks``, ``n_params``, ``compression`` and the
        per-split ``discarded_weights``.
    """
    in_shape, out_shape = check_tt_shapes(in_shape, out_shape)
    truncation = Truncation(max_bond, cutoff, cutoff_mode)
    W = np.asarray(W)
    N, M = math.prod(in_shape), math.prod(out_shape)
    if W.ndim != 2 or W.shape != (N, M):
        raise ValueError(f"W has shape {W.shape}; in_shape {in_shape} x out_shape {out_shape} needs ({N}, {M})")
    if not np.all(np.isfinite(W)):
        raise ValueError("W contains NaN or inf; a TT-SVD needs finite values")
    dtype = np.result_type(W.dtype, np.float32) if dtype is None else np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype={dtype} is not a floating type; TT cores need float32 or float64")
    d = len(in_shape)
    # scale free: the TT-SVD runs on W / max|W| (squares of tiny or huge entries would under- or
    # overflow), and the first core carries the scale back
    scale = float(np.max(np.abs(W))) if W.size else 0.0
    scale = scale if scale > 0 else 1.0
    work = (W.astype(np.float64) / scale).reshape(in_shape + out_shape)
    # interleave to (n_1, m_1, n_2, m_2, ...)
    work = work.transpose([ax for k in range(d) for ax in (k, d + k)])
    total = float(np.sum(work * work))
    cores, discarded = [], []
    rank = 1
    rest = work.reshape(1, -1)
    for k in range(d - 1):
        size = in_shape[k] * out_shape[k]
        mat = rest.reshape(rank * size, -1)
        U, rest, tinfo = split_matrix(mat, "right", truncation)
        kept = tinfo.kept
        cores.append(U.reshape(rank, in_shape[k], out_shape[k], kept))
        # weight discarded at this split relative to the whole matrix
        sq = float(np.sum(tinfo.singular_values**2))
        discarded.append(tinfo.discarded_weight * sq / total if total > 0 else 0.0)
        rank = kept
    cores.append(rest.reshape(rank, in_shape[-1], out_shape[-1], 1))
    cores[0] = cores[0] * scale
    tt = TTMatrix([c.astype(dtype) for c in cores], backend)
    approx = tt.to_dense().astype(np.float64) / scale
    err = float(np.linalg.norm(approx - W / scale) / np.linalg.norm(W / scale)) if total > 0 else 0.0
    info = {
        "relative_error": err,
        "error_bound": float(np.sqrt(sum(discarded))),
        "discarded_weights": discarded,
        "ranks": tt.ranks,
        "n_params": tt.n_params,
        "compression": tt.compression,
    }
    return tt, info


__all__ = ["TTMatrix", "TruncationInfo", "check_tt_shapes", "factorize", "tt_from_dense"]
