"""The array backend: the only module that knows numpy from cupy.

A :class:`Backend` is chosen once (``get_backend("numpy")`` or
``get_backend("cupy")``) and passed down to every numerical routine; nothing
in tnlearn imports cupy anywhere else.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from tnlearn.host_threads import add_in_order, chunk_slices
from tnlearn.rows import log_normalise_rows

BACKENDS = ("numpy", "cupy")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine (no cupy, or no usable CUDA GPU)."""


@dataclass(frozen=True)
class Backend:
    """An array module plus the few per-sample kernels the sweep engine needs.

    Attributes
    ----------
    name : str
        ``"numpy"`` or ``"cupy"``.
    xp : module
        The array namespace (``numpy`` or ``cupy``).
    row_outer : callable
        ``row_outer(a (n, p), b (n, q)) -> (n, p * q)`` per-sample outer product.
    row_outer3 : callable
        ``row_outer3(a (n, p), b (n, q), c (n, r)) -> (n, p * q * r)``:
        ``row_outer(row_outer(a, b), c)`` in one pass.
    row_contract : callable
        ``row_contract(t (n, m, q), r (n, q)) -> (n, m)`` per-sample contraction.
    row_normalise : callable
        ``row_normalise(env (n, m)) -> log_norms (n,)``: each row divided by its
        norm in place; the float64 log norms returned.
    row_residual_outer : callable
        ``row_residual_outer(t (n, L, q), r (n, q), y (n, L), scale (n,), loss, f_out (n, L))``:
        the outputs ``f = scale * (t . r)`` into ``f_out``, then ``t`` overwritten by
        ``scale * residual(f) (x) r`` (see :func:`tnlearn._kernels.row_residual_outer`).
    loss_sum : callable
        ``loss_sum(f (n, L), y (n, L), loss, log_scale=None (n,)) -> float64``
        (a numpy scalar, or a 0-d device array):
        the summed loss of the outputs (each row scaled by ``exp(log_scale)``
        first), in float64 (see :func:`tnlearn._kernels.loss_sum`);
        :meth:`loss_total` shares it among the host threads.
    default_chunk_size : int
        Samples per chunk when an estimator's ``chunk_size="auto"`` and the
        shapes are not known: 4096 on the CPU, 65536 on a GPU (each chunk
        costs a few dozen kernel launches, so fewer, larger chunks).
    chunk_bytes : int or None
        The CPU's per-core cache (bytes): ``chunk_size="auto"`` with known
        shapes takes the chunk whose GEMM operands fill twice that (see
        :func:`resolve_chunk_size`).  None on a GPU.
    workers : ChunkWorkers or None
        The host threads that share a pass's chunks inside
        :meth:`host_threads` (:class:`tnlearn.host_threads.ChunkWorkers`);
        None on a GPU, where a pass runs its chunks in order.
    """

    name: str
    xp: Any = field(repr=False)
    row_outer: Callable = field(repr=False)
    row_outer3: Callable = field(repr=False)
    row_contract: Callable = field(repr=False)
    row_normalise: Callable = field(repr=False)
    row_residual_outer: Callable = field(repr=False)
    loss_sum: Callable = field(repr=False)
    default_chunk_size: int = 4096
    chunk_bytes: int | None = None
    workers: Any = field(default=None, repr=False, compare=False)

    def __reduce__(self):
        # pickled (joblib, multiprocessing, copy.deepcopy) by name: modules and compiled
        # kernels are not picklable, and the receiving process builds its own backend
        return (get_backend, (self.name,))

    def map_chunks(self, work, n_samples, chunk_size):
        """``work`` over shares of a pass's chunks: one share per host worker thread, or all in order.

        Parameters
        ----------
        work : callable
            ``work(share: list of slice) -> result``; writes only its own chunks' rows.
        n_samples, chunk_size : int
            The pass covers samples ``[0, n_samples)`` in chunks of at most
            ``chunk_size``, of equal sizes in a session of several workers
            (:func:`tnlearn.host_threads.chunk_slices`).

        Returns
        -------
        list
            The shares' results in worker order (one result without workers).
        """
        if self.workers is None:
            return [work(chunk_slices(n_samples, chunk_size))]
        return self.workers.map(work, chunk_slices(n_samples, chunk_size, self.workers.active))

    def sum_chunks(self, work, n_samples, chunk_size):
        """:meth:`map_chunks` whose shares return partial sums: their total, added in worker order.

        See :func:`tnlearn.host_threads.add_in_order` (arrays, scalars, or tuples of them).
        """
        return add_in_order(self.map_chunks(work, n_samples, chunk_size))

    def loss_total(self, f, y, loss, log_scale=None, chunk_size=None):
        """:attr:`loss_sum` of all rows, the chunks shared among the host threads (float64 scalar or 0-d array).

        ``chunk_size`` (rows) defaults to what makes sharing pay for the hand-off to another
        thread: 2,048 for the cross-entropy (an exponential per output), 16,384 for the squared loss.
        """
        if self.workers is None:
            return self.loss_sum(f, y, loss, log_scale)
        if chunk_size is None:
            chunk_size = 2048 if loss == "cross_entropy" else 16384

        def work(share):
            return sum((self.loss_sum(f[sl], y[sl], loss, None if log_scale is None else log_scale[sl])
                        for sl in share), self.xp.float64(0.0))

        return self.sum_chunks(work, f.shape[0], chunk_size)

    def host_threads(self):
        """Context: passes inside share their chunks among the host's cores (BLAS at one thread meanwhile).

        :meth:`tnlearn.host_threads.ChunkWorkers.session`; nothing on a GPU.
        """
        return nullcontext() if self.workers is None else self.workers.session()

    def asarray(self, x, dtype=None):
        """Move ``x`` onto this backend (no copy when it is already there)."""
        return self.xp.asarray(x, dtype=dtype)

    def asnumpy(self, x):
        """Bring ``x`` back to a host numpy array."""
        if self.name == "cupy":
            return self.xp.asnumpy(x)
        return np.asarray(x)

    def synchronize(self):
        """Wait until the device has finished the work queued so far (nothing to wait for on numpy).

        GPU work runs asynchronously: a timer read without this measures the
        queueing, not the work.
        """
        cuda = getattr(self.xp, "cuda", None) if self.name == "cupy" else None
        if cuda is not None:
            cuda.get_current_stream().synchronize()


def _numpy_backend() -> Backend:
    from tnlearn import _kernels

    from tnlearn.host_threads import ChunkWorkers, core_cache_bytes

    k = _kernels
    return Backend("numpy", np, k.row_outer, k.row_outer3, k.row_contract, k.row_normalise, k.row_residual_outer,
                   k.loss_sum, chunk_bytes=core_cache_bytes(), workers=ChunkWorkers())


def loss_value(f, y, loss, xp):
    """Summed loss of outputs ``f`` (n, L) against one-hot targets ``y`` (n, L), a 0-d array."""
    if loss == "mse":
        r = f - y
        return 0.5 * xp.sum(r.astype(np.float64) ** 2)
    z = f.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    return -xp.sum(logp * y)


def array_module_kernels(xp):
    """The per-sample kernels written with array operations of ``xp`` (the cupy backend's).

    On a GPU, broadcasting and ``einsum`` run these as a few device kernels each;
    there is no compiled loop to write.  The same code runs with ``xp = numpy``,
    which is how the tests check it on machines without a GPU.

    Returns
    -------
    tuple
        ``(row_outer, row_outer3, row_contract, row_normalise, row_residual_outer, loss_sum)``
        with the signatures of the :class:`Backend` fields.
    """
    from tnlearn._kernels import check_fused_loss

    def row_outer(a, b, out=None):
        n, p = a.shape
        if out is None:
            return (a[:, :, None] * b[:, None, :]).reshape(n, -1)
        if out.flags.c_contiguous:  # one kernel straight into out, no temporary
            xp.multiply(a[:, :, None], b[:, None, :], out=out.reshape(n, p, b.shape[1]))
        else:  # (reshaping a strided out would write into a copy)
            out[...] = (a[:, :, None] * b[:, None, :]).reshape(n, -1)
        return out

    def row_outer3(a, b, c, out=None):
        return row_outer(row_outer(a, b), c, out=out)

    def row_contract(t, r, out=None):
        res = xp.einsum("nmq,nq->nm", t, r)
        if out is None:
            return res
        out[...] = res
        return out

    def row_normalise(env):
        return log_normalise_rows(env, xp)

    def row_residual_outer(t, r, y, scale, loss, f_out):
        check_fused_loss(loss)
        xp.multiply(xp.einsum("nmq,nq->nm", t, r), scale[:, None], out=f_out)
        if loss == "mse":
            w = y - f_out
        else:
            z = f_out - f_out.max(axis=1, keepdims=True)
            e = xp.exp(z)
            w = y - e / e.sum(axis=1, keepdims=True)
        w *= scale[:, None]
        xp.multiply(w[:, :, None], r[:, None, :], out=t)  # straight into t: no (n, L, q) temporary
        return f_out

    def loss_sum(f, y, loss, log_scale=None):
        check_fused_loss(loss)
        z = f.astype(np.float64)
        if log_scale is not None:
            z = z * xp.exp(log_scale)[:, None]
        return loss_value(z, y, loss, xp)

    return row_outer, row_outer3, row_contract, row_normalise, row_residual_outer, loss_sum


def _cupy_backend() -> Backend:
    try:
        import cupy as cp
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise BackendUnavailableError(
            "backend='cupy' needs the cupy package: install it with "
            "`pip install 'tnlearn[gpu]'` (cupy-cuda12x) on a machine with a CUDA GPU, "
            "or use backend='numpy'"
        ) from exc
    try:
        n_gpus = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when there is no driver / device
        raise BackendUnavailableError(
            f"backend='cupy' was requested but no CUDA GPU is usable ({exc}); "
            "use backend='numpy' on this machine"
        ) from exc
    if n_gpus < 1:  # pragma: no cover
        raise BackendUnavailableError("backend='cupy' was requested but no CUDA GPU was found; use backend='numpy'")

    return Backend("cupy", cp, *array_module_kernels(cp), default_chunk_size=65536)


def resolve_chunk_size(chunk_size, backend: Backend, row_bytes=None) -> int:
    """An estimator's ``chunk_size`` as an int.

    Parameters
    ----------
    chunk_size : int or "auto"
        ``"auto"``: on the CPU with ``row_bytes`` given, the samples whose
        ``row_bytes`` fill twice the per-core cache (``backend.chunk_bytes``),
        rounded down to a power of two in [256, 8192]; else
        ``backend.default_chunk_size``.  Twice: on the project's machine (1 MiB
        L2) whole sweeps of 60,000 x 196 samples were fastest there (m = 20:
        1,024 samples 11.9 s, 2,048 12.1 s, 512 13.5 s, 256 14.3 s; m = 64:
        512 and 1,024 93 s, 256 101 s).
    backend : Backend
    row_bytes : int, optional
        Bytes one sample adds to a chunk's temporaries (for a bond of an MPS:
        its projected input row and its forward product row).

    Returns
    -------
    int
    """
    if chunk_size != "auto":
        return int(chunk_size)
    if row_bytes is None or backend.chunk_bytes is None:
        return backend.default_chunk_size
    rows = max(1, 2 * backend.chunk_bytes // max(1, int(row_bytes)))
    return int(min(8192, max(256, 1 << (rows.bit_length() - 1))))


def get_backend(name: str | Backend = "numpy") -> Backend:
    """Return the backend called ``name``.

    Parameters
    ----------
    name : {"numpy", "cupy"} or Backend
        A backend name, or an existing backend (returned unchanged).

    Raises
    ------
    ValueError
        For an unknown name.
    BackendUnavailableError
        For ``"cupy"`` on a machine without cupy or without a usable GPU (a
        ``RuntimeError``).
    """
    if isinstance(name, Backend):
        return name
    if name == "numpy":
        return _numpy_backend()
    if name == "cupy":
        return _cupy_backend()
    raise ValueError(f"backend={name!r} is not known; choose one of {BACKENDS}")
