"""Passes over sample chunks on all the host's cores, one chunk per core at a time.

A pass over the samples (a bond's forward and gradient products, the line
search's forward product, an environment update) is a loop over independent
chunks of samples.  BLAS alone parallelises each chunk's matrix products over
the cores, but the per-sample kernels between them run on one core, the
products' small shapes (``(1024, 80) @ (80, 200)`` at max bond 20) split poorly,
and BLAS's threads spin between products on the cores the kernels need.  In a
:meth:`ChunkWorkers.session` (an MPS fit, a benchmark's sweeps) BLAS runs one
thread, and each of ``n`` workers (the calling thread and ``n - 1`` pool
threads) takes every ``n``-th chunk of a pass (the chunks of equal sizes) and
runs its whole chain (products, and the numba kernels, which release the
GIL) on one core, while the chunk's temporaries stay in that core's cache.
Measured figures are in ``benchmarks/README.md`` (``bench_sweep.py``).

``n`` is the number of threads BLAS would use when the session starts
(threadpoolctl reads it), so ``OMP_NUM_THREADS=1``, ``OPENBLAS_NUM_THREADS=1``
or a surrounding ``threadpoolctl.threadpool_limits(1)`` run every pass
serially, in sample order.  Sums over the samples (gradients, Gram matrices)
are accumulated per worker and added in worker order: with the same number of
workers (and chunk size) a fit gives the same bits every time; with another
number, the same results to rounding.
"""

from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def chunk_slices(n_samples, chunk_size, n_workers=1):
    """The chunks of a pass over ``n_samples`` samples, in sample order.

    With one worker: chunks of ``chunk_size`` samples, the last one shorter.
    With ``n_workers`` > 1: as many chunks as ``chunk_size`` asks for, rounded
    up to a multiple of ``n_workers``, of equal sizes (to one sample, none larger
    than ``chunk_size``), so that every worker's share of the pass is the same
    size: 1,347 samples in chunks of 1,024 on two workers are two chunks of 674
    and 673, not 1,024 and 323 (the pass then took the larger chunk's time).  A
    pass that fits in one chunk is not split: handing half of it to another
    thread costs more than it saves.
    """
    n_chunks = -(-n_samples // chunk_size)
    if n_workers > 1 and n_chunks > 1:  # a pass of one chunk stays one, in the calling thread
        n_chunks = -(-n_chunks // n_workers) * n_workers
        n_chunks = min(n_chunks, n_samples)
        base, extra = divmod(n_samples, n_chunks)
        bounds = [0]
        for k in range(n_chunks):
            bounds.append(bounds[-1] + base + (k < extra))
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return [slice(start, min(start + chunk_size, n_samples)) for start in range(0, n_samples, chunk_size)]


def add_in_order(parts):
    """The workers' partial sums added in worker order (the same bits for the same number of workers).

    Each part is an array or scalar, or a tuple / list of them (None entries stay None); arrays
    are added in place into the first worker's.
    """
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return type(first)(add_in_order([part[k] for part in parts]) for k in range(len(first)))
    total = first
    for part in parts[1:]:
        total += part
    return total


def core_cache_bytes(default=1 << 20) -> int:
    """Size of one core's largest private cache (L2 on current x86 and ARM servers), in bytes.

    Read from Linux's ``/sys/devices/system/cpu/cpu0/cache``; ``default`` (1 MiB)
    where that is missing or unreadable.
    """
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    best = 0
    try:
        for index in root.glob("index*"):
            if (index / "level").read_text().strip() == "2" and (index / "type").read_text().strip() != "Instruction":
                best = max(best, _parse_size((index / "size").read_text()))
    except (OSError, ValueError):
        return default
    return best or default


def _parse_size(text):
    text = text.strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


class ChunkWorkers:
    """Worker threads for passes over sample chunks on the host.

    Passes share their chunks among the workers only inside :meth:`session`,
    which holds BLAS at one thread for its whole duration; outside a session a
    pass runs its chunks in order in the calling thread, with BLAS as it is.
    (Switching BLAS between one and several threads around every pass was
    measured to cost more than the sharing gains: OpenBLAS's own threads, woken
    for the small products between passes, spin on the cores the workers need.)

    Parameters
    ----------
    n_workers : int, optional
        Threads per pass in a session. None (default): the threads BLAS would
        use when the session starts, at most the cores available; an int:
        exactly that many (tests).
    """

    def __init__(self, n_workers=None):
        self.fixed = None if n_workers is None else int(n_workers)
        self.active = 1  # workers of the session in progress (1: no session)
        self._pool = None

    def _session_workers(self, blas):
        if self.fixed is not None:
            return max(1, self.fixed)
        cores = available_cores()
        if cores < 2:
            return 1
        threads = [lib.num_threads for lib in blas.lib_controllers]
        return max(1, min(min(threads, default=1), cores))

    @contextmanager
    def session(self):
        """Share the chunks of every pass run inside among the workers; BLAS at one thread meanwhile.

        A session of this object inside another is the outer one.  A session of
        another object inside this one (a second fit started from a callback of
        the first) sees BLAS at one thread and runs its passes in order.  The
        worker threads end with the session.  Yields the number of workers.
        """
        if self.active > 1:
            yield self.active
            return
        from threadpoolctl import ThreadpoolController

        blas = ThreadpoolController().select(user_api="blas")
        n = self._session_workers(blas)
        if n < 2:
            yield 1
            return
        with blas.limit(limits=1):
            self.active = n
            try:
                yield n
            finally:
                self.active = 1
                if self._pool is not None:
                    self._pool.shutdown(wait=True)  # idle by now: every pass waited for its workers
                    self._pool = None

    def map(self, work, slices):
        """Split ``slices`` among the session's workers and run ``work`` on each share.

        Parameters
        ----------
        work : callable
            ``work(share) -> result`` for a list of chunk slices; shares of
            different workers run at the same time, so ``work`` may write only
            to its own chunks' rows of shared arrays.
        slices : list of slice
            The pass's chunks, in sample order.

        Returns
        -------
        list
            One result per worker, in worker order; worker ``k`` had
            ``slices[k::n]``.  Outside a session, or with one chunk, one
            result: ``[work(slices)]``, run in this thread.
        """
        n = min(self.active, len(slices))
        if n <= 1:
            return [work(slices)]
        if self._pool is None:  # one pool per session; the calling thread is worker 0
            self._pool = ThreadPoolExecutor(max_workers=self.active - 1, thread_name_prefix="tnlearn-chunks")
        # each pool share runs in a copy of the caller's context, as the caller's own share does
        # (numpy's errstate is a context variable)
        futures = [self._pool.submit(contextvars.copy_context().run, work, slices[k::n]) for k in range(1, n)]
        try:
            first = work(slices[0::n])  # the caller's share: no hand-off to a pool thread and back
            return [first] + [f.result() for f in futures]
        finally:
            wait(futures)  # no worker outlives its pass, even when one raised
