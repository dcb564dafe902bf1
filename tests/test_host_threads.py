"""Passes over sample chunks shared by host worker threads (tnlearn.host_threads)."""

import dataclasses
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from tnlearn.backend import get_backend, resolve_chunk_size
from tnlearn.environments import EnvironmentCache
from tnlearn.host_threads import ChunkWorkers, _parse_size, chunk_slices, core_cache_bytes
from tnlearn.local_problem import LocalProblem, TargetResidual


def _backend(n_workers):
    return dataclasses.replace(get_backend("numpy"), workers=ChunkWorkers(n_workers))


def test_each_worker_takes_every_nth_chunk_in_its_own_thread():
    slices = [slice(i, i + 1) for i in range(7)]
    seen = {}
    together = threading.Barrier(3, timeout=10)  # passes only if the three shares run at the same time

    def work(share):
        seen[share[0].start] = threading.get_ident()
        together.wait()
        return [s.start for s in share]

    workers = ChunkWorkers(3)
    assert workers.map(lambda share: len(share), slices) == [7]  # outside a session: in order, in this thread
    with workers.session() as n:
        parts = workers.map(work, slices)
    assert n == 3 and parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert len(set(seen.values())) == 3 and seen[0] == threading.get_ident()  # the caller is worker 0
    one = ChunkWorkers(3)
    with one.session():
        assert one.map(lambda share: (threading.get_ident(), share), slices[:1]) == [(threading.get_ident(),
                                                                                      slices[:1])]
    assert one._pool is None  # one chunk: this thread, no pool


@pytest.mark.parametrize("n_samples,chunk,n_workers", [(1347, 1024, 2), (8000, 1024, 2), (60000, 1024, 2),
                                                      (10, 4, 3), (1, 1024, 2), (5, 1, 2), (0, 8, 2),
                                                      (1000, 1024, 2)])
def test_chunks_of_a_shared_pass_are_balanced_and_no_larger_than_asked(n_samples, chunk, n_workers):
    serial = chunk_slices(n_samples, chunk)
    assert [s.stop - s.start for s in serial[:-1]] == [chunk] * (len(serial) - 1)
    shared = chunk_slices(n_samples, chunk, n_workers)
    sizes = [s.stop - s.start for s in shared]
    assert shared[:1] == [] or (shared[0].start == 0 and shared[-1].stop == n_samples)
    assert all(a.stop == b.start for a, b in zip(shared[:-1], shared[1:]))  # contiguous, in sample order
    assert all(0 < k <= chunk for k in sizes) and (not sizes or max(sizes) - min(sizes) <= 1)
    # every worker gets as many chunks; a pass of one chunk stays one (in the calling thread)
    assert len(shared) % n_workers == 0 or len(shared) == n_samples or len(serial) == 1
    if len(serial) == 1:
        assert shared == serial
    assert len(shared) >= len(serial)
    if (n_samples, chunk) == (1347, 1024):
        assert sizes == [674, 673]  # not 1,024 and 323: the pass no longer waits for one large chunk


def test_a_session_holds_blas_at_one_thread_and_follows_its_limit():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    workers = ChunkWorkers(2)
    with workers.session() as outer:
        assert set(blas_threads()) == {1}  # each worker runs its chunk's products on its own core
        with workers.session() as inner:  # a nested session of the same workers is the outer one
            assert inner == outer == 2 and workers.active == 2
        assert workers.active == 2 and set(blas_threads()) == {1}
        assert workers.map(lambda share: len(share), [slice(i, i + 1) for i in range(4)]) == [2, 2]
        pool = workers._pool
    assert blas_threads() == before
    assert workers.active == 1 and workers._pool is None and pool._shutdown  # the threads end with the session
    threads = []
    with threadpool_limits(1, user_api="blas"):
        serial = ChunkWorkers()
        with serial.session() as n:
            parts = serial.map(lambda share: threads.append(threading.get_ident()) or len(share),
                               [slice(i, i + 1) for i in range(5)])
    assert n == 1 and parts == [5] and threads == [threading.get_ident()]


def test_every_share_runs_in_the_caller_s_numpy_error_state():
    """The caller works the first share itself; the pool's shares see its context too (errstate, ...)."""
    workers = ChunkWorkers(3)
    with workers.session(), np.errstate(divide="raise"):
        states = workers.map(lambda share: np.geterr()["divide"], [slice(i, i + 1) for i in range(3)])
    assert states == ["raise"] * 3


def test_a_worker_that_raises_stops_the_pass_after_every_worker_has_finished():
    finished = []

    def work(share):
        if share[0].start == 0:
            raise ValueError("chunk 0 failed")
        threading.Event().wait(0.2)
        finished.append(share[0].start)

    workers = ChunkWorkers(2)
    with pytest.raises(ValueError, match="chunk 0 failed"), workers.session():
        workers.map(work, [slice(0, 1), slice(1, 2)])
    assert finished == [1]  # the other worker was waited for, not left running


def _problem(rng, backend, n=203, Dl=5, Dr=4, d=2, L=3, chunk=16, normalize=False):
    left, right = rng.standard_normal((n, Dl)), rng.standard_normal((n, Dr))
    phi_a, phi_b = rng.random((n, d)), rng.random((n, d))
    logs = rng.standard_normal(n)
    return LocalProblem(left, logs, phi_a, phi_b, right, -logs / 3, L, backend, chunk_size=chunk,
                        normalize_samples=normalize)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_a_pass_shared_by_workers_equals_the_serial_pass(loss):
    """Outputs to the bit (each row is computed by one worker); sums (gradient, Grams) to rounding, the
    same bits every time with the same number of workers."""
    rng = np.random.default_rng(0)
    serial, shared = _problem(rng, _backend(1)), _problem(np.random.default_rng(0), _backend(3))
    Bs = rng.standard_normal(serial.shape)
    Y = np.eye(3)[rng.integers(0, 3, serial.n_samples)]
    w = rng.standard_normal((serial.n_samples, 3))
    res = TargetResidual(loss, Y)

    def passes(problem):
        return (problem.forward_and_gradient(Bs, res, with_grams=True, gram_rows=70), problem.forward(Bs, rows=100),
                problem.gradient(w), problem.grams(rows=70))

    (f1, g1, grams1), fw1, gw1, gr1 = passes(serial)
    with shared.backend.host_threads() as n_workers:
        (f3, g3, grams3), fw3, gw3, gr3 = passes(shared)
        again = shared.forward_and_gradient(Bs, res, with_grams=True, gram_rows=70)
    assert n_workers == 3
    np.testing.assert_array_equal(f1, f3)
    np.testing.assert_array_equal(fw1, fw3)
    for a, b in [(g1, g3), (gw1, gw3), *zip(grams1, grams3), *zip(gr1, gr3)]:
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max())
    assert not np.array_equal(g1, g3) or not np.array_equal(grams1[0], grams3[0])  # the sums were really split
    np.testing.assert_array_equal(again[1], g3)  # the same bits with the same number of workers
    for a, b in zip(grams3, again[2]):
        np.testing.assert_array_equal(a, b)


def test_environment_updates_shared_by_workers_equal_the_serial_ones():
    rng = np.random.default_rng(1)
    phi = rng.random((100, 2))
    core = rng.standard_normal((3, 2, 4))
    caches = []
    for n_workers in (1, 2):
        envs = EnvironmentCache(3, 100, 4, np.float64, _backend(n_workers), chunk_size=7)
        envs.data[1, :, :3] = rng.standard_normal((100, 3)) if not caches else caches[0].data[1, :, :3]
        envs.dims[1] = 3
        with envs.backend.host_threads():
            envs.advance_left(1, phi, core)
        caches.append(envs)
    np.testing.assert_array_equal(caches[0].data[2], caches[1].data[2])
    np.testing.assert_array_equal(caches[0].log_norm[2], caches[1].log_norm[2])


def test_a_fit_on_two_workers_is_the_serial_fit_to_rounding(monkeypatch, tiny_problem):
    import tnlearn.models.mps_classifier as module
    from tnlearn import MPSClassifier

    X, y = tiny_problem
    fits = {}
    for n_workers in (1, 2):
        monkeypatch.setattr(module, "get_backend", lambda name, n=n_workers: _backend(n))
        clf = MPSClassifier(max_bond=4, n_sweeps=2, chunk_size=16, dtype="float64", random_state=0).fit(X, y)
        fits[n_workers] = clf
    losses = [[r.loss for r in fits[n].history_.records] for n in (1, 2)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-9)
    np.testing.assert_array_equal(fits[1].predict(X), fits[2].predict(X))
    np.testing.assert_allclose(fits[2].decision_function(X), fits[1].decision_function(X), rtol=1e-7, atol=1e-9)


def test_a_continued_fit_shares_its_passes_and_matches_one_fit_bit_for_bit(monkeypatch, tiny_problem):
    """warm_start runs on the fitted head's backend: its passes are shared as the first fit's were, so
    2 + 1 sweeps give the same network as 3 (each chunk's sums in the same worker, the same order)."""
    import tnlearn.models.mps_classifier as module
    from tnlearn import MPSClassifier

    monkeypatch.setattr(module, "get_backend", lambda name: _backend(2))
    X, y = tiny_problem
    kw = dict(max_bond=4, chunk_size=16, dtype="float64", random_state=0)
    active = []

    def record(model):
        active.append(model.head_.backend.workers.active)

    once = MPSClassifier(n_sweeps=3, **kw).fit(X, y)
    twice = MPSClassifier(n_sweeps=2, warm_start=True, **kw).fit(X, y)
    twice.set_params(n_sweeps=1).fit(X, y, on_sweep=record)
    assert active == [2]  # the continued fit's sweep ran in a session of its head's workers
    assert [r.loss for r in twice.history_.records] == [r.loss for r in once.history_.records]
    for a, b in zip(once.head_.cores, twice.head_.cores):
        np.testing.assert_array_equal(a, b)


def test_the_pca_start_shared_by_workers_is_the_serial_start_to_rounding():
    """Density matrices and the read-out's sums split among workers: the same initial model (its outputs;
    eigenvector signs may differ, the least-squares read-out absorbs them)."""
    from tnlearn.embeddings import embed
    from tnlearn.stages.mps import MPSHead, pca_init_cores

    # 144 samples: nine chunks of 16, three to a worker, the serial run's chunks (sums differ in order only);
    # 150: ten chunks of 16 serially, twelve of 12-13 shared (the start is sensitive to the chunking at
    # ~1e-7: a serial start in chunks of 13 differs from one in chunks of 16 as much)
    for n, rtol in ((144, 1e-9), (150, 1e-5)):
        rng = np.random.default_rng(3)
        X = rng.random((n, 7))
        Y = np.eye(3)[rng.integers(0, 3, n)]
        phi = np.ascontiguousarray(embed(X, "trig").transpose(1, 0, 2))
        outputs = []
        for n_workers in (1, 3):
            backend = _backend(n_workers)
            with backend.host_threads() as active:
                cores, log_norm = pca_init_cores(phi, 3, 4, np.random.default_rng(0), backend, chunk_size=16,
                                                 targets=Y)
            assert active == n_workers
            outputs.append(MPSHead(cores, 0, log_norm, backend).decision_function(phi))
        np.testing.assert_allclose(outputs[1], outputs[0], rtol=rtol, atol=1e-12)


def test_auto_chunk_fills_twice_the_core_cache_with_the_bond_temporaries():
    numpy_backend = dataclasses.replace(get_backend("numpy"), chunk_bytes=1 << 20)
    row = 20 * (2 * 2 + 10) * 4  # max_bond 20, d = 2, 10 classes, float32: 1,120 bytes
    assert resolve_chunk_size("auto", numpy_backend, row_bytes=row) == 1024  # 1,872 rows -> a power of two below
    assert resolve_chunk_size("auto", numpy_backend, row_bytes=1) == 8192
    assert resolve_chunk_size("auto", numpy_backend, row_bytes=1 << 30) == 256
    assert resolve_chunk_size(100, numpy_backend, row_bytes=row) == 100  # an explicit size is kept
    assert resolve_chunk_size("auto", numpy_backend) == numpy_backend.default_chunk_size  # shapes unknown
    gpu_like = dataclasses.replace(numpy_backend, chunk_bytes=None, default_chunk_size=65536)
    assert resolve_chunk_size("auto", gpu_like, row_bytes=row) == 65536


def test_core_cache_size_is_read_in_the_kernel_s_units():
    assert _parse_size("1024K\n") == 1 << 20 and _parse_size("2M") == 2 << 20 and _parse_size("512") == 512
    assert core_cache_bytes() >= 1 << 10


def test_a_conv_mps_fit_shares_its_passes_and_equals_the_serial_fit_to_rounding(monkeypatch):
    import tnlearn.models.conv_mps as module
    from sklearn.datasets import load_digits

    from tnlearn import ConvMPSClassifier

    X, y = load_digits(return_X_y=True)
    X, y = X[:300] / 16.0, y[:300]
    fits, active = {}, []
    for n_workers in (1, 2):
        monkeypatch.setattr(module, "get_backend", lambda name, n=n_workers: _backend(n))
        clf = ConvMPSClassifier(n_channels=3, max_bond=6, n_sweeps=2, chunk_size=64, dtype="float64",
                                random_state=0)
        fits[n_workers] = clf.fit(X, y, on_sweep=lambda m: active.append(m.head_.backend.workers.active))
    assert active == [1, 1, 2, 2]  # each sweep ran in a session of that many workers
    losses = [[r.loss for r in fits[n].history_.records] for n in (1, 2)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-8)
    np.testing.assert_array_equal(fits[1].predict(X), fits[2].predict(X))
