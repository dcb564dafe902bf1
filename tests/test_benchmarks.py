"""The benchmark scripts' own logic: their figures are only as good as their accounting."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_gpu  # noqa: E402
import bench_sweep  # noqa: E402


class FakeClock:
    """A ``perf_counter`` that only moves when the fake engine says it worked."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def fake_engine(monkeypatch):
    """A module whose ``outer`` works 3 s itself and calls ``inner`` (2 s) twice, on a fake clock."""
    clock = FakeClock()
    monkeypatch.setattr(bench_sweep, "time", clock)
    mod = types.ModuleType("fake_engine")

    def inner():
        clock.now += 2.0

    def outer():
        clock.now += 3.0
        mod.inner()
        mod.inner()

    mod.inner, mod.outer, mod.clock = inner, outer, clock
    monkeypatch.setitem(sys.modules, "fake_engine", mod)
    return mod


def test_breakdown_times_are_exclusive_and_restored(fake_engine):
    syncs = []
    parts = (("outer", "fake_engine", None, "outer"), ("inner", "fake_engine", None, "inner"))
    bd = bench_sweep.Breakdown(sync=lambda: syncs.append(1), parts=parts)
    try:
        fake_engine.outer()
        fake_engine.clock.now += 1.0  # untimed work after it
    finally:
        bd.restore()
    assert fake_engine.outer.__name__ == "outer" and fake_engine.inner.__name__ == "inner"  # unwrapped
    assert bd.seconds == {"outer": 3.0, "inner": 4.0}  # its own time, not the inner calls'
    assert len(syncs) == 6  # before and after each of the three timed calls
    assert bd.parts(fake_engine.clock.now)[bench_sweep.REST] == 1.0


def test_gpu_benchmark_fractions_cover_the_sweep():
    parts = {"first pass": 4.0, "line-search forward": 1.0, "preconditioner factors": 0.5,
             "preconditioner apply": 0.5, "split": 1.5, "environments": 1.0, "transfers": 0.5,
             bench_sweep.REST: 1.0}
    shares = bench_gpu.fractions(parts)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["host dense algebra (split eigh/SVD/QR, preconditioner factors)"] == pytest.approx(0.2)
    assert shares["host <-> device transfers"] == pytest.approx(0.05)
    # every part the breakdown times is counted in exactly one share
    named = set(bench_gpu.HOST_ALGEBRA + bench_gpu.TRANSFERS + bench_gpu.DEVICE_PASSES)
    assert named == {name for name, *_ in bench_sweep.Breakdown.PARTS}


def test_the_sweep_benchmark_runs_on_the_device_code_path():
    """``bench_sweep.run`` on the emulated device: sweeps, syncs and the transfers part all work."""
    from device_emulation import emulated_device_backend

    backend, log = emulated_device_backend()
    args = bench_gpu.sweep_args(bond=4, backend=backend, sweeps=1, n_samples=300, n_sites=10, breakdown=True)
    times, peaks, _, _, head, breakdowns = bench_sweep.run(args)
    assert len(times) == 1 and max(head.bond_dims) == 4 and peaks[0] > 0
    assert breakdowns[0]["transfers"] > 0 and log.to_host > 0
    from tnlearn.backend import Backend
    from tnlearn.local_problem import LocalProblem

    assert LocalProblem.forward_and_gradient.__name__ == "forward_and_gradient"  # the engine is unwrapped again
    assert Backend.asnumpy.__name__ == "asnumpy"


def test_the_gpu_benchmark_refuses_to_run_without_a_gpu(capsys):
    from tnlearn.backend import BackendUnavailableError, get_backend

    try:
        get_backend("cupy")
        pytest.skip("this machine has a GPU")
    except BackendUnavailableError:
        pass
    assert bench_gpu.main(["--bonds", "4"]) == 2
    assert "GPU figures come only from a GPU" in capsys.readouterr().err


def test_a_failing_sweep_leaves_the_engine_unwrapped(monkeypatch):
    import tnlearn.sweeps
    from tnlearn.local_problem import LocalProblem

    def broken(*args, **kwargs):
        raise FloatingPointError("a sweep that fails")

    monkeypatch.setattr(tnlearn.sweeps, "full_sweep", broken)
    args = bench_gpu.sweep_args(bond=4, backend="numpy", sweeps=1, n_samples=200, n_sites=8, breakdown=True)
    with pytest.raises(FloatingPointError):
        bench_sweep.run(args)
    assert LocalProblem.forward_and_gradient.__name__ == "forward_and_gradient"


def test_cpu_runs_can_be_held_to_the_reference_machines_core_count(monkeypatch):
    """``--cpu-threads 2`` measures a 2-core figure on the GPU machine's processor: BLAS is capped in the run."""
    import argparse

    from threadpoolctl import threadpool_info

    seen = []

    def fake_run(args):
        seen.append({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"})
        return [1.0], [1.0], 0.0, 0.0, None, []

    monkeypatch.setattr(bench_sweep, "run", fake_run)
    args = argparse.Namespace(n_samples=100, n_sites=8)
    bench_gpu.time_sweeps(4, "numpy", 1, args, cpu_threads=1)
    assert seen == [{1}]
    before = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    bench_gpu.time_sweeps(4, "numpy", 1, args)
    assert seen[1] == before  # no cap unless asked


# ------------------------------------------------------------------ the tn-cnn benchmark
def test_the_dense_cnn_trains_long_enough_on_small_data():
    import bench_tn_cnn

    assert bench_tn_cnn.cnn_epochs(60000) == 10  # 469 steps an epoch: 10 epochs make > 2,000 steps
    assert bench_tn_cnn.cnn_epochs(1347) == 182  # 11 steps an epoch
    assert bench_tn_cnn.cnn_epochs(1347, given=3) == 3


def test_the_trained_cnn_becomes_the_same_tn_cnn_when_nothing_is_truncated():
    """The PyTorch weights' layout (NCHW, (out, in)) is converted to tn-cnn's: exact ranks reproduce the CNN."""
    pytest.importorskip("torch", reason="the dense CNN peer needs the bench extra")
    import bench_tn_cnn
    from bench_tt import load

    data = load("digits8")
    row = bench_tn_cnn.run_one("digits8", data, "retune", 1, 0, 20, (0, 10**6))
    assert row["compressed"]["test_accuracy"] == pytest.approx(row["cnn"]["test_accuracy"], abs=1e-12)
    assert all(r["relative_error"] < 1e-5 for r in row["compression"].values())
    assert "retune" in bench_tn_cnn.table([row]) and f"{row['n_params']:,}" in bench_tn_cnn.table([row])
