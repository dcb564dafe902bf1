"""Data-parallel sweeps over MPI: a communicator wrapper, sample shards, the bond broadcast.

A DMRG sweep is data parallel: at every bond the forward pass, the gradient,
the data Gram matrices and the curvature of the step are sums over samples.
With ``K`` ranks every rank holds a contiguous shard of the (shuffled)
training samples and the per-sample environments of that shard only
(``N * n / K * m`` numbers instead of ``N * n * m``); the sample sums are
added across ranks with ``Allreduce``.  The truncated split of the updated
block is computed once, on rank 0, and the two new cores are broadcast, so
every rank holds the very same model after every bond whatever the MPI
library's reduction order (MPI does not promise bit-identical ``Allreduce``
results on all ranks, nor do BLAS libraries on different CPUs).

Nothing here is global: a communicator is made once (:func:`get_comm`) and
passed down, like the array backend.  The serial communicator is the
default and mpi4py is imported only when MPI is asked for.  Only the
buffer-based ``Allreduce`` / ``Bcast`` of mpi4py are used (its pickle-based
lowercase methods are 10-20x slower for arrays).

Traffic per bond update (one gradient step, preconditioning and the
data-metric split, the defaults): one ``Allreduce`` of the gradient block
(``Dl d d L Dr`` values), one of the two Gram matrices
(``(Dl d)^2 + (d Dr)^2`` float64 values), a few scalars, and a broadcast of
the two new cores.  :class:`CommStats` counts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

# environment variables by which MPI launchers tell a process its world size / rank
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")
# dtypes a broadcast can carry (the header names them by position)
_DTYPES = tuple(np.dtype(t) for t in ("float32", "float64", "int64", "int32", "bool", "uint8"))


class MPIUnavailableError(RuntimeError):
    """MPI was asked for but mpi4py (or an MPI library) cannot be imported."""


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIUnavailableError(
            f"MPI was requested (distributed='mpi' or an mpiexec launch) but mpi4py cannot be imported "
            f"({exc}); install it with `pip install 'tnlearn[mpi]'` (mpi4py and the mpich wheel)"
        ) from exc
    return MPI


def launched_size():
    """World size announced by an MPI launcher in the environment (1 when not launched by one).

    Reads ``PMI_SIZE`` (MPICH / Hydra, Intel MPI, Slurm ``srun --mpi=pmi2``),
    ``OMPI_COMM_WORLD_SIZE`` (Open MPI), ``MV2_COMM_WORLD_SIZE`` (MVAPICH) or
    ``PMIX_SIZE``; with ``PMIX_RANK`` alone (``srun --mpi=pmix``) it falls
    back to ``SLURM_NTASKS``.  Never imports mpi4py.

    Returns
    -------
    int
    """
    for var in _SIZE_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    if "PMIX_RANK" in os.environ and os.environ.get("SLURM_NTASKS", "").isdigit():
        return int(os.environ["SLURM_NTASKS"])
    return 1


def launched_rank():
    """This process's rank as announced by an MPI launcher (0 when not launched by one)."""
    for var in _RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


@dataclass
class CommStats:
    """Traffic counters of a communicator (payload bytes of this rank's buffers).

    Attributes
    ----------
    allreduce_calls, allreduce_bytes : int
        ``Allreduce`` calls and the bytes of the buffers reduced.  An
        ``Allreduce`` of ``b`` bytes over ``K`` ranks moves about
        ``2 b (K - 1) / K`` bytes in and out of every rank (reduce-scatter +
        all-gather).
    bcast_calls, bcast_bytes : int
        ``Bcast`` calls and the bytes broadcast (headers included).
    """

    allreduce_calls: int = 0
    allreduce_bytes: int = 0
    bcast_calls: int = 0
    bcast_bytes: int = 0

    @property
    def total_bytes(self):
        return self.allreduce_bytes + self.bcast_bytes

    def reset(self):
        self.allreduce_calls = self.allreduce_bytes = self.bcast_calls = self.bcast_bytes = 0


class SerialComm:
    """The one-process communicator: every collective is the identity.

    Attributes
    ----------
    rank : int
        Always 0.
    size : int
        Always 1.
    stats : CommStats
        Stays at zero.
    """

    rank = 0
    size = 1

    def __init__(self):
        self.stats = CommStats()

    def allreduce_sum(self, x):
        """Return ``x`` (the sum over one rank)."""
        return x

    def allreduce_max(self, x):
        """Return ``x``."""
        return x

    def any(self, flag):
        """Return ``bool(flag)``."""
        return bool(flag)

    def bcast_arrays(self, arrays, root=0):
        """Return ``list(arrays)``."""
        return list(arrays)

    def barrier(self):
        """Nothing to wait for."""

    def __repr__(self):
        return "SerialComm()"


class MPIComm:
    """An mpi4py communicator with the few buffer-based collectives the sweep needs.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.  Pass a sub-communicator to train on a
        subset of the ranks.

    Attributes
    ----------
    rank, size : int
    comm : mpi4py.MPI.Comm
    stats : CommStats
    """

    def __init__(self, comm=None):
        self._MPI = _import_mpi()
        self.comm = self._MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.stats = CommStats()

    @staticmethod
    def _buffer(x):
        """A writable C-contiguous host array holding ``x`` (``x`` itself when it already is one)."""
        if isinstance(x, np.ndarray) and x.flags.c_contiguous and x.flags.writeable:
            return x
        return np.array(x, order="C")  # copies; keeps a 0-d shape for scalars

    def _allreduce(self, x, op):
        buf = self._buffer(x)
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=op)
        self.stats.allreduce_calls += 1
        self.stats.allreduce_bytes += buf.nbytes
        return buf

    def allreduce_sum(self, x):
        """Elementwise sum of ``x`` over the ranks.

        Parameters
        ----------
        x : ndarray or numpy scalar (host)
            Reduced in place when it is a writable C-contiguous array.

        Returns
        -------
        ndarray, same shape and dtype as ``x``
        """
        return self._allreduce(x, self._MPI.SUM)

    def allreduce_max(self, x):
        """Elementwise maximum of ``x`` over the ranks (host array or scalar)."""
        return self._allreduce(x, self._MPI.MAX)

    def any(self, flag):
        """True on every rank when ``flag`` is true on at least one."""
        return bool(self.allreduce_max(np.array(1 if flag else 0, dtype=np.int64)))

    def _bcast(self, buf, root):
        self.comm.Bcast(buf, root=root)
        self.stats.bcast_calls += 1
        self.stats.bcast_bytes += buf.nbytes

    def bcast_arrays(self, arrays, root=0):
        """Broadcast host arrays of any shapes and dtypes from ``root``.

        Three ``Bcast`` calls whatever the number of arrays: the header
        length, the header (dtype and shape of each array), and all payloads
        packed into one byte buffer.

        Parameters
        ----------
        arrays : sequence of ndarray
            Read on ``root`` only (pass ``[]`` or anything elsewhere).
        root : int

        Returns
        -------
        list of ndarray
            ``root``'s arrays, on every rank (fresh C-contiguous copies off root).
        """
        if self.rank == root:
            arrays = [np.ascontiguousarray(a) if np.ndim(a) else np.array(a) for a in arrays]
            header = [len(arrays)]
            for a in arrays:
                if a.dtype not in _DTYPES:
                    raise TypeError(f"cannot broadcast dtype {a.dtype}; supported: {[d.name for d in _DTYPES]}")
                header += [_DTYPES.index(a.dtype), a.ndim, *a.shape]
            header = np.array(header, dtype=np.int64)
            length = np.array(len(header), dtype=np.int64)
        else:
            length = np.zeros((), dtype=np.int64)
        self._bcast(length, root)
        if self.rank != root:
            header = np.empty(int(length), dtype=np.int64)
        self._bcast(header, root)
        specs, pos = [], 1
        for _ in range(int(header[0])):
            dtype, ndim = _DTYPES[int(header[pos])], int(header[pos + 1])
            specs.append((dtype, tuple(int(s) for s in header[pos + 2 : pos + 2 + ndim])))
            pos += 2 + ndim
        sizes = [int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for dtype, shape in specs]
        if self.rank == root:
            payload = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays]) if arrays else np.empty(0, np.uint8)
        else:
            payload = np.empty(sum(sizes), dtype=np.uint8)
        if payload.size:
            self._bcast(payload, root)
        if self.rank == root:
            return arrays
        out, start = [], 0
        for (dtype, shape), nbytes in zip(specs, sizes):
            out.append(payload[start : start + nbytes].view(dtype).reshape(shape).copy())
            start += nbytes
        return out

    def barrier(self):
        """Wait for every rank."""
        self.comm.Barrier()

    def __repr__(self):
        return f"MPIComm(rank={self.rank}, size={self.size})"


def get_comm(spec=None):
    """The communicator that ``spec`` names.

    Parameters
    ----------
    spec : None, "serial", "mpi", SerialComm, MPIComm or mpi4py.MPI.Comm
        ``None`` / ``"serial"``: one process (:class:`SerialComm`, no MPI
        import).  ``"mpi"``: ``MPI.COMM_WORLD``; a process started without
        ``mpiexec`` is a world of one rank.  A wrapper is returned unchanged;
        a raw mpi4py communicator is wrapped.

    Returns
    -------
    SerialComm or MPIComm

    Raises
    ------
    MPIUnavailableError
        ``"mpi"`` without mpi4py installed.
    ValueError, TypeError
        Anything else.
    """
    if spec is None or (isinstance(spec, str) and spec == "serial"):
        return SerialComm()
    if isinstance(spec, (SerialComm, MPIComm)):
        return spec
    if isinstance(spec, str):
        if spec == "mpi":
            return MPIComm()
        raise ValueError(f"distributed={spec!r} is not known; use None (one process) or 'mpi'")
    if hasattr(spec, "Allreduce") and hasattr(spec, "Get_rank"):
        return MPIComm(spec)
    raise TypeError(f"comm must be None, 'mpi', a tnlearn.distributed communicator or an mpi4py "
                    f"communicator, got {type(spec).__name__}")


def shard_bounds(n_total, size, rank):
    """Contiguous, balanced shard ``[start, stop)`` of ``n_total`` samples for ``rank`` of ``size``.

    The first ``n_total % size`` ranks get one sample more; shards are in
    rank order, so their union in rank order is ``0 .. n_total - 1``.

    Returns
    -------
    (int, int)
    """
    q, r = divmod(int(n_total), int(size))
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


@dataclass(frozen=True)
class Shard:
    """This rank's part of a data set split across ranks, and the collectives over the parts.

    The engine (:class:`~tnlearn.local_problem.LocalProblem`, the solvers,
    :func:`~tnlearn.stages.mps.pca_init_cores`, the sweeper) takes a shard,
    or None for one process; that is the only thing that differs.

    Attributes
    ----------
    comm : MPIComm or SerialComm
    start, stop : int
        Global indices (in the shuffled order) of this rank's samples.
    n_total : int
        Samples on all ranks together.
    backend : Backend
        Moves device arrays to the host and back around a collective.
    """

    comm: object
    start: int
    stop: int
    n_total: int
    backend: object = field(repr=False)

    @property
    def n_local(self):
        return self.stop - self.start

    @property
    def is_root(self):
        return self.comm.rank == 0

    def local_rows(self, rows):
        """How many of this shard's samples lie in the global prefix ``[0, rows)`` (all when None)."""
        if rows is None:
            return self.n_local
        return max(0, min(int(rows), self.stop) - self.start)

    def global_rows(self, rows):
        """Size of the global prefix ``[0, rows)`` (``n_total`` when None)."""
        return self.n_total if rows is None else min(int(rows), self.n_total)

    def sum(self, x):
        """Sum of ``x`` (backend array or scalar) over the ranks, on the backend."""
        return self.backend.asarray(self.comm.allreduce_sum(self.backend.asnumpy(x)))

    def max(self, x):
        """Maximum of ``x`` over the ranks, on the backend."""
        return self.backend.asarray(self.comm.allreduce_max(self.backend.asnumpy(x)))


def make_shard(comm, n_total, backend):
    """This rank's :class:`Shard` of ``n_total`` samples (see :func:`shard_bounds`).

    Raises
    ------
    ValueError
        With fewer samples than ranks (a rank would hold no data).
    """
    if n_total < comm.size:
        raise ValueError(f"{n_total} training samples cannot be shared by {comm.size} MPI ranks; "
                         f"use at most {n_total} ranks or more samples")
    start, stop = shard_bounds(n_total, comm.size, comm.rank)
    return Shard(comm, start, stop, n_total, backend)


def check_same_data(comm, X, y):
    """Raise on every rank unless all ranks were given the same ``X`` and ``y``.

    Compares shapes and float64 sums with rank 0's (a cheap fingerprint:
    every rank must load the same data set, with the same seed for any
    subsampling, before the estimator shards it).
    """
    mine = np.array([X.shape[0], X.shape[1], np.sum(X, dtype=np.float64),
                     np.sum(np.unique(y, return_inverse=True)[1], dtype=np.float64)], dtype=np.float64)
    root = comm.bcast_arrays([mine])[0]
    if comm.any(not np.array_equal(root, mine)):
        raise ValueError("the MPI ranks were given different training data (shape or values differ from "
                         "rank 0's); every rank must pass the same X and y (same file, same seed) to fit")


def broadcast_cores(shard, head, sites, info=None):
    """Make ``head``'s cores at ``sites`` (and its centre and log norm) rank 0's on every rank.

    Parameters
    ----------
    shard : Shard
    head : MPSHead
        Modified in place on ranks other than 0.
    sites : sequence of int
    info : TruncationInfo, optional
        Rank 0's split diagnostics, returned on every rank.

    Returns
    -------
    TruncationInfo or None
    """
    from tnlearn.truncation import TruncationInfo

    be = shard.backend
    if shard.is_root:
        meta = np.array([head.center, head.log_norm] + ([info.kept, info.discarded_weight] if info else []))
        arrays = [meta] + [be.asnumpy(head.cores[i]) for i in sites]
        if info is not None:
            arrays.append(np.asarray(info.singular_values, dtype=np.float64))
        shard.comm.bcast_arrays(arrays)
        return info
    arrays = shard.comm.bcast_arrays([])
    meta = arrays[0]
    head.assign(dict(zip(sites, arrays[1:])), int(meta[0]), float(meta[1]))
    if len(meta) > 2:
        return TruncationInfo(kept=int(meta[2]), discarded_weight=float(meta[3]), singular_values=arrays[-1])
    return None


def abort_parallel_run(status):
    """End every rank of a parallel run with ``status`` (``MPI_Abort``); nothing in one process.

    For the command line: a rank that fails alone would leave the others
    waiting forever in their next collective.  Does nothing unless mpi4py
    was imported and ``MPI.COMM_WORLD`` has more than one rank.
    """
    import sys

    MPI = sys.modules.get("mpi4py.MPI")
    if MPI is None or not MPI.Is_initialized() or MPI.Is_finalized():
        return
    if MPI.COMM_WORLD.Get_size() > 1:
        MPI.COMM_WORLD.Abort(status)
