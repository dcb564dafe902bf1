"""The local linear problem of a two-site update, as GEMMs over the sample axis.

With the environments of a block fixed, the model output is linear in the
merged block.  Written as a matrix ``Bm`` of shape ``(Dl * d * d, L * Dr)``::

    f[n, l] = g * s[n] * sum_{i, b} P[n, i] Bm[i, l * Dr + b] R[n, b]

with ``P[n] = L[n] (x) phi_j[n] (x) phi_{j+1}[n]`` (length ``Dl d d``, from the
normalised environments), ``R`` the right environment,
``s[n] = exp(logL[n] + logR[n] - o[n] - c)`` the per-sample scale relative to
the largest (``c``), and ``g = exp(c + log_norm)`` the global scale.  The
fitted output is ``f(x_n) / exp(o[n])``, the model's output divided by a
per-sample normaliser: the norms of the sample's environments at this bond
(``normalize_samples``), a fixed offset, or 1 (raw outputs).
All passes work on the *scaled* block ``Bs = g * Bm`` (so numbers stay O(1)
whatever the chain length) and over chunks of samples, so every product is a
large matrix multiply and intermediates stay in cache:

* forward:  ``T = P @ Bs`` (one GEMM), then a per-sample contraction with ``R``;
* gradient: ``G = P.T @ (w (x) R)`` (one GEMM) for per-sample weights ``w``.

In a solver's first pass (:meth:`LocalProblem.forward_and_gradient` with a
:class:`TargetResidual`) the per-sample contraction, the loss residual ``w``
and the operand ``w (x) R`` are one compiled pass over ``T``, written back into
``T``, so a chunk costs the two GEMMs plus one sweep over its ``(c, L Dr)``
block.  The Gram matrices of the block's two halves (preconditioner and
data-metric split) are accumulated in the same pass; one already known from
an earlier visit (``known_grams``) is not recomputed.

Data-parallel runs (:mod:`tnlearn.distributed`) give the problem a *shard*:
the arrays then hold this rank's samples only, and every sum over samples
leaves through :meth:`LocalProblem.reduce_sum` (an ``Allreduce``): the
gradient, the Gram matrices, and in the solvers the step's curvature.
Sample prefixes (``rows``, ``gram_rows``) are global: "the first ``rows``
samples of the shuffled training set", whichever rank holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def bond_row_bytes(max_bond, d, n_labels, dtype):
    """Bytes one sample adds to a bond pass's temporaries (``resolve_chunk_size``'s ``row_bytes``).

    Its projected input row ``P`` (``max_bond * d**2`` numbers) and its forward product row ``T``
    (``n_labels * max_bond``), at the block's largest bond dimension.
    """
    return max_bond * (d * d + n_labels) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class TargetResidual:
    """The residual ``-dC/df`` of a named loss against one-hot targets.

    ``"mse"``: ``y - f``; ``"cross_entropy"``: ``y - softmax(f)``.  Given one of
    these instead of a callable, :meth:`LocalProblem.forward_and_gradient`
    computes outputs, residuals and the gradient operand in one fused pass
    (:attr:`Backend.row_residual_outer <tnlearn.backend.Backend>`).

    Attributes
    ----------
    loss : {"mse", "cross_entropy"}
    targets : array, shape (n, L)
        One-hot targets of the samples held here.
    """

    loss: str
    targets: Any


class LocalProblem:
    """Outputs of a block as a linear map of the block, over all samples.

    Parameters
    ----------
    left : array, shape (n, Dl)
        Normalised left environments.
    left_log : array, shape (n,)
        Their log norms.
    phi_a, phi_b : array, shape (n, d)
        Local vectors of the two block sites.
    right : array, shape (n, Dr)
    right_log : array, shape (n,)
    n_labels : int
    backend : Backend
    chunk_size : int
    normalize_samples : bool
        Fit the outputs of the *normalised* environments: ``o[n] = logL[n] +
        logR[n]`` (so ``s[n] = 1``, ``c = 0``), the output divided by the norm of
        the sample's projection onto this bond's variational space (see
        ``MPSClassifier.sample_norm``); ``sample_log_offset`` is then ignored.
        The Gram matrices are then unweighted and depend on one environment
        each (reused from the previous visit).
    shard : tnlearn.distributed.Shard, optional
        This rank's part of the samples in a data-parallel run (None: all
        samples are here).
    known_grams : tuple, optional
        ``(left, right)``: Gram matrices of the block's halves already known
        from an earlier visit of the same environments (same ``gram_rows``;
        None for a half to compute).  Returned as they are by :meth:`grams`
        and the fused pass, which then skip that half's products.
    sample_log_offset : array, shape (n,), optional
        Without ``normalize_samples``: a fixed log normaliser ``o[n]`` of each
        sample (float64, on the backend); 0 (the raw outputs) when None.

    Attributes
    ----------
    log_normaliser : array, shape (n,), float64
        ``o[n]``: the problem's outputs are the model's divided by
        ``exp(o[n])``; outputs of another problem convert with
        ``exp(o_other - o)``.
    n_samples : int
        Samples held here.
    n_total : int
        Samples on all ranks (``n_samples`` without a shard).
    """

    def __init__(
        self, left, left_log, phi_a, phi_b, right, right_log, n_labels, backend, chunk_size=4096,
        normalize_samples=False, shard=None, known_grams=None, sample_log_offset=None,
    ):
        xp = backend.xp
        self.backend = backend
        self.left, self.phi_a, self.phi_b, self.right = left, phi_a, phi_b, right
        self.n_samples, self.Dl = left.shape
        self.Dr = right.shape[1]
        self.d = phi_a.shape[1]
        self.n_labels = n_labels
        self.chunk_size = chunk_size
        self.dtype = left.dtype
        self.normalize_samples = bool(normalize_samples)
        self.shard = shard
        self.n_total = self.n_samples if shard is None else shard.n_total
        self.known_grams = (None, None) if known_grams is None else tuple(known_grams)
        if normalize_samples:
            self.log_normaliser = left_log + right_log
            self.log_shift = xp.zeros((), dtype=np.float64)
            self.scale = xp.ones(self.n_samples, dtype=self.dtype)
        else:
            self.log_normaliser = (xp.zeros(self.n_samples, dtype=np.float64) if sample_log_offset is None
                                   else sample_log_offset)
            log_s = left_log + right_log - self.log_normaliser
            self.log_shift = xp.max(log_s)  # 0-d, stays on the device
            if shard is not None:  # one scale for the whole data set: the working block is shared
                self.log_shift = shard.max(self.log_shift)
            self.scale = xp.exp(log_s - self.log_shift).astype(self.dtype)
        self.shape = (self.Dl * self.d * self.d, n_labels * self.Dr)

    @property
    def penalty_weight(self):
        """``|W|^2 / |Bs|^2``: the squared norm of the network per squared norm of the working block (0-d, device).

        The working block is the network's scaled by ``exp(c)`` (and the
        centre block of a canonical network has its norm), so an L2 penalty
        ``alpha / 2 * |W|^2`` on the network is ``alpha / 2 * penalty_weight
        * |Bs|^2`` here, the same objective at every bond.
        """
        xp = self.backend.xp
        return xp.exp(xp.asarray(-2.0 * self.log_shift, dtype=np.float64))

    # -- scaling between stored blocks and the well-conditioned working block --------
    def to_scaled(self, block, log_norm):
        """Working block ``Bs`` from a stored block and the model's log norm.

        Parameters
        ----------
        block : array, shape (Dl, d, d, L, Dr)
        log_norm : float

        Returns
        -------
        array, shape (Dl * d * d, L * Dr)
        """
        xp = self.backend.xp
        factor = xp.exp(self.log_shift + log_norm).astype(self.dtype)
        return block.reshape(self.shape) * factor

    def from_scaled(self, Bs):
        """Unit-norm block and its log norm from a working block, on the host where the split works.

        One transfer and no other sync: the norm is taken on the host.

        Parameters
        ----------
        Bs : array, shape (Dl * d * d, L * Dr)
            The working block, on the backend.

        Returns
        -------
        block : ndarray, shape (Dl, d, d, L, Dr), unit Frobenius norm (host)
        log_norm : float
            ``log ||Bs|| - log_shift`` (the shift is 0 with ``normalize_samples``,
            read from the device otherwise).
        """
        host = self.backend.asnumpy(Bs)
        nrm = np.linalg.norm(host)
        block = (host / nrm).reshape(self.Dl, self.d, self.d, self.n_labels, self.Dr)
        shift = 0.0 if self.normalize_samples else float(self.log_shift)  # no device read when it is 0
        return block, float(np.log(nrm.astype(np.float64))) - shift

    # -- sums across ranks ----------------------------------------------------------
    def reduce_sum(self, x):
        """Sum of a per-rank partial sum ``x`` over all ranks (``x`` itself in one process)."""
        if self.shard is None:
            return x
        return self.shard.sum(x)

    def _local_rows(self, rows):
        """Rows of the global prefix ``[0, rows)`` held here (``rows`` unchanged in one process)."""
        if self.shard is None or rows is None:
            return rows
        return self.shard.local_rows(rows)

    def global_rows(self, rows):
        """Samples in the global prefix ``[0, rows)`` over all ranks (all samples when None)."""
        return self.n_total if rows is None else min(rows, self.n_total)

    # -- passes over the samples --------------------------------------------------
    def _rows(self, rows=None):
        """Samples held here in the prefix ``[0, rows)`` of this rank's samples (all by default)."""
        return self.n_samples if rows is None else min(rows, self.n_samples)

    def _projected(self, sl):
        return self.backend.row_outer3(self.left[sl], self.phi_a[sl], self.phi_b[sl])

    def _forward_chunk(self, P, Bs, sl):
        xp = self.backend.xp
        T = xp.matmul(P, Bs).reshape(P.shape[0], self.n_labels, self.Dr)
        out = self.backend.row_contract(T, self.right[sl])
        if not self.normalize_samples:
            out *= self.scale[sl, None]
        return out

    def forward(self, Bs, rows=None):
        """Outputs of the first ``rows`` samples (all by default).

        Parameters
        ----------
        Bs : array, shape (Dl * d * d, L * Dr)
        rows : int, optional
            A global prefix; with a shard, only its samples inside it are computed.

        Returns
        -------
        array, shape (rows, L)
            Per sample: not reduced across ranks.
        """
        xp = self.backend.xp
        n = self._rows(self._local_rows(rows))
        out = xp.empty((n, self.n_labels), dtype=self.dtype)

        def work(share):
            for sl in share:
                out[sl] = self._forward_chunk(self._projected(sl), Bs, sl)

        self.backend.map_chunks(work, n, self.chunk_size)
        return out

    def gradient(self, weights):
        """``A.T @ weights``: the sum over samples of ``w[n, l] * (row n of the map)``.

        Parameters
        ----------
        weights : array, shape (n, L)

        Returns
        -------
        array, shape (Dl * d * d, L * Dr)
            Summed over the samples of all ranks.
        """
        def work(share):
            grad_t = self._zero_gradient()
            for sl in share:
                self._accumulate(grad_t, self._projected(sl), weights[sl], sl)
            return grad_t

        return self._finish_gradient(self.backend.sum_chunks(work, self.n_samples, self.chunk_size))

    # The gradient is accumulated transposed, ``grad.T += W.T @ P``: with ``P`` and ``W``
    # both C-ordered that product runs ~10% faster in OpenBLAS than ``P.T @ W``.
    def _zero_gradient(self):
        return self.backend.xp.zeros(self.shape[::-1], dtype=self.dtype)

    def _finish_gradient(self, grad_t):
        return self.reduce_sum(self.backend.xp.ascontiguousarray(grad_t.T))

    def _accumulate(self, grad_t, P, w, sl):
        if not self.normalize_samples:
            w = w * self.scale[sl, None]
        W = self.backend.row_outer(w, self.right[sl])
        grad_t += W.T @ P

    def grams(self, rows=None):
        """Data Gram matrices of the two halves of the projected input.

        Parameters
        ----------
        rows : int, optional
            Use only the first ``rows`` samples (all by default): an unbiased
            estimate up to a factor when the samples are in random order.

        Returns
        -------
        left : ndarray, shape (Dl * d, Dl * d), float64 (host)
            ``sum_n s[n] (L[n] (x) phi_j[n]) (L[n] (x) phi_j[n])^T``.
        right : ndarray, shape (d * Dr, d * Dr), float64 (host)
            ``sum_n s[n] (phi_{j+1}[n] (x) R[n]) (phi_{j+1}[n] (x) R[n])^T``.
            A half given in ``known_grams`` is returned as it was given
            (e.g. a :class:`~tnlearn.gram.GramMatrix`).
        """
        ro = self.backend.row_outer

        def work(share):
            acc = self._gram_accumulators()
            for sl in share:
                x = ro(self.left[sl], self.phi_a[sl]) if acc[0] is not None else None
                self._accumulate_grams(acc, x, sl)
            return acc

        return self._gram_result(self.backend.sum_chunks(work, self._rows(self._local_rows(rows)), self.chunk_size))

    def _gram_accumulators(self):
        """Zeroed float64 accumulators for the Gram halves not known already (None for known ones)."""
        xp = self.backend.xp
        sizes = (self.Dl * self.d, self.d * self.Dr)
        return [None if known is not None else xp.zeros((k, k), dtype=np.float64)
                for known, k in zip(self.known_grams, sizes)]

    def _accumulate_grams(self, acc, x, sl):
        """Add one chunk's contribution; ``x`` is the chunk's ``L (x) phi_j`` (None when the left Gram is known)."""
        w = None if self.normalize_samples else self.scale[sl, None]
        if acc[0] is not None:
            acc[0] += (x.T @ (x if w is None else x * w)).astype(np.float64)
        if acc[1] is not None:
            y = self.backend.row_outer(self.phi_b[sl], self.right[sl])
            acc[1] += (y.T @ (y if w is None else y * w)).astype(np.float64)

    def _gram_result(self, acc):
        """The two Gram matrices on the host: the known ones, and the accumulated ones summed over ranks."""
        todo = [a for a in acc if a is not None]
        if self.shard is not None and todo:  # one Allreduce for what was accumulated here
            xp = self.backend.xp
            flat = self.reduce_sum(xp.concatenate([a.reshape(-1) for a in todo]))
            acc, start = list(acc), 0
            for k, a in enumerate(acc):
                if a is not None:
                    acc[k] = flat[start : start + a.size].reshape(a.shape)
                    start += a.size
        return tuple(known if known is not None else self.backend.asnumpy(a)
                     for known, a in zip(self.known_grams, acc))

    def forward_and_gradient(self, Bs, residual, with_grams=False, gram_rows=None):
        """One fused pass: outputs, then the gradient of the residual weights.

        Parameters
        ----------
        Bs : array, shape (Dl * d * d, L * Dr)
        residual : TargetResidual or callable
            The per-sample weights ``-dC/df``: a :class:`TargetResidual` (the
            fast path: contraction, residual and gradient operand in one
            compiled pass per chunk) or any ``residual(f_chunk (c, L), sl) ->
            w_chunk (c, L)`` for the chunk ``sl`` (called from the host's worker
            threads, several chunks at once: it must not keep state).

        Returns
        -------
        f : array, shape (n, L)
            Outputs of the samples held here.
        grad : array, shape (Dl * d * d, L * Dr)
            ``sum_n w[n, l] * row_n`` over the samples of all ranks, the
            descent direction for ``Bs``.
        grams : tuple
            Only with ``with_grams=True``: :meth:`grams` (of the first
            ``gram_rows`` samples, all by default), accumulated in the same
            pass (the left half ``L (x) phi_j`` is formed anyway).
        """
        xp = self.backend.xp
        ro = self.backend.row_outer
        fused = isinstance(residual, TargetResidual)
        f = xp.empty((self.n_samples, self.n_labels), dtype=self.dtype)
        gram_end = self._rows(self._local_rows(gram_rows))

        def work(share):  # one worker's chunks: its own gradient and Gram sums
            grad_t = self._zero_gradient()
            acc = self._gram_accumulators() if with_grams else None
            for sl in share:
                gram_sl = slice(sl.start, min(sl.stop, gram_end)) if with_grams and sl.start < gram_end else None
                # the left half L (x) phi_j is formed on its own only when its Gram is wanted
                x = ro(self.left[sl], self.phi_a[sl]) if gram_sl is not None and acc[0] is not None else None
                P = self._projected(sl) if x is None else ro(x, self.phi_b[sl])
                if gram_sl is not None:
                    self._accumulate_grams(acc, None if x is None else x[: gram_sl.stop - sl.start], gram_sl)
                if fused:
                    T = xp.matmul(P, Bs)
                    self.backend.row_residual_outer(
                        T.reshape(P.shape[0], self.n_labels, self.Dr), self.right[sl], residual.targets[sl],
                        self.scale[sl], residual.loss, f[sl],
                    )
                    grad_t += T.T @ P  # T now holds the gradient operand w (x) R
                else:
                    f[sl] = self._forward_chunk(P, Bs, sl)
                    self._accumulate(grad_t, P, residual(f[sl], sl), sl)
            return grad_t, acc

        grad_t, acc = self.backend.sum_chunks(work, self.n_samples, self.chunk_size)
        grad = self._finish_gradient(grad_t)
        if with_grams:
            return f, grad, self._gram_result(acc)
        return f, grad
