"""Data-parallel sweeps (tnlearn.distributed): the serial communicator, sharding, and
``mpiexec -n 2`` runs on this machine compared with the single-process result.

Why a tolerance and not bit-identity: with 2 ranks every sample sum (gradient,
Gram matrices, curvature) is two partial GEMMs added by ``Allreduce`` instead of
one GEMM over all samples, so the sums are rounded in a different order; the
relative differences start at ~1e-16 and grow to ~1e-12 over two float64 sweeps.
The bounds below (1e-8) leave room for that and still fail on any real
difference (a missing reduction changes the results by O(1)).  The SVD signs
of a split may flip under such rounding (a sign gauge of the bond), so cores
are compared after aligning that gauge, and the model's outputs directly.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tnlearn import MPSClassifier
from tnlearn.backend import get_backend
from tnlearn.distributed import (
    MPIUnavailableError,
    SerialComm,
    Shard,
    get_comm,
    launched_size,
    make_shard,
    shard_bounds,
)

TOL = 1e-8  # relative, float64, 2 ranks vs 1 (see the module docstring)


# ------------------------------------------------------------------ serial unit tests
@pytest.mark.parametrize("n, size", [(10, 1), (10, 3), (7, 7), (1000, 4), (1001, 6)])
def test_shards_are_contiguous_balanced_and_cover_the_data(n, size):
    bounds = [shard_bounds(n, size, r) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_make_shard_refuses_more_ranks_than_samples():
    with pytest.raises(ValueError, match="cannot be shared by 4 MPI ranks"):
        make_shard(SimpleNamespace(rank=0, size=4), 3, get_backend("numpy"))


@pytest.mark.parametrize("rows, local, total", [(None, 4, 10), (2, 0, 2), (5, 2, 5), (9, 4, 9), (50, 4, 10)])
def test_shard_prefix_rows_are_global(rows, local, total):
    shard = Shard(SerialComm(), 3, 7, 10, get_backend("numpy"))  # samples 3..6 of 10
    assert shard.local_rows(rows) == local
    assert shard.global_rows(rows) == total


def test_serial_comm_is_the_identity():
    comm = get_comm(None)
    assert isinstance(comm, SerialComm) and (comm.rank, comm.size) == (0, 1)
    x = np.arange(5.0)
    assert comm.allreduce_sum(x) is x and comm.allreduce_max(x) is x
    assert comm.bcast_arrays([x])[0] is x
    assert comm.any(True) and not comm.any(False)
    assert comm.stats.total_bytes == 0
    assert get_comm("serial").size == 1 and get_comm(comm) is comm


@pytest.mark.parametrize("spec, exc", [("gloo", ValueError), (3, TypeError)])
def test_get_comm_rejects_unknown(spec, exc):
    with pytest.raises(exc):
        get_comm(spec)


def test_mpi_without_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(MPIUnavailableError, match=r"pip install 'tnlearn\[mpi\]'"):
        get_comm("mpi")


@pytest.mark.parametrize("env, size", [({}, 1), ({"PMI_SIZE": "4"}, 4), ({"OMPI_COMM_WORLD_SIZE": "8"}, 8),
                                       ({"PMIX_RANK": "0", "SLURM_NTASKS": "16"}, 16)])
def test_launched_size_reads_the_launcher(monkeypatch, env, size):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE", "PMIX_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert launched_size() == size


def test_distributed_parameter_is_validated_and_cloneable(tiny_problem):
    from sklearn.base import clone

    X, y = tiny_problem
    assert clone(MPSClassifier(distributed="mpi")).get_params()["distributed"] == "mpi"
    with pytest.raises(ValueError, match="The 'distributed' parameter of MPSClassifier must be a str among {'mpi'} or None. Got 'yes'"):
        MPSClassifier(distributed="yes").fit(X, y)


def test_sweep_with_a_one_rank_shard_is_bit_identical(rng):
    """The hooks are pure plumbing: a shard of one rank gives exactly the serial sweep."""
    from tnlearn.solvers import SolverOptions
    from tnlearn.stages.mps import MPSHead, pca_init_cores
    from tnlearn.sweeps import SweepOptions, build_environments, center_outputs, full_sweep, training_loss

    be = get_backend("numpy")
    phi = np.stack([np.cos(np.pi / 2 * rng.random((200, 8))), np.sin(np.pi / 2 * rng.random((200, 8)))], -1)
    phi = np.ascontiguousarray(phi.transpose(1, 0, 2))
    y = np.eye(3)[rng.integers(0, 3, 200)]
    opts = SweepOptions(max_bond=4, solver=SolverOptions(precondition=True, line_search_samples=50,
                                                         gram_samples=70), normalize_samples=False)
    results = []
    for shard in (None, Shard(SerialComm(), 0, 200, 200, be)):
        cores, log_norm = pca_init_cores(phi, 3, 4, np.random.default_rng(0), be, shard=shard)
        head = MPSHead(cores, 0, log_norm, be)
        envs = build_environments(head, phi, opts)
        full_sweep(head, envs, phi, y, opts, shard=shard)
        loss = training_loss(center_outputs(head, envs, phi), y, "mse", np, shard)
        results.append((head, loss))
    (a, la), (b, lb) = results
    assert la == lb and a.log_norm == b.log_norm
    for ca, cb in zip(a.cores, b.cores):
        np.testing.assert_array_equal(ca, cb)


# --------------------------------------------------------------------- mpiexec runs
def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'tnlearn[mpi]')")
    local = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, in this environment
    exe = str(local) if local.exists() else shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec found next to the Python executable or on PATH (pip install mpich)")
    return exe


def _run_mpi(args, cwd, n=2, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([_mpiexec(), "-host", "localhost", "-n", str(n), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"mpiexec failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _data():
    """Synthetic data with no constant pixels (ties in the PCA spectra would pick arbitrary bases)."""
    rng = np.random.default_rng(5)
    X = rng.random((301, 12))
    y = (X[:, :4].sum(axis=1) * 2.3).astype(int) % 4
    return X, y


PARAMS = [  # each through a different solver / loss / prefix-sample path
    dict(init="identity", max_bond=6, n_sweeps=2, dtype="float64", random_state=1),
    dict(init="identity", max_bond=5, n_sweeps=2, dtype="float64", random_state=2, solver="cg", n_iter=3,
         sample_norm=False, chunk_size=64),
    dict(init="identity", max_bond=5, n_sweeps=2, dtype="float64", random_state=3, loss="cross_entropy",
         n_iter=2, line_search_samples=100, gram_samples=140, truncation="svd"),
]

SCRIPT = """
import json, sys
import numpy as np
from tnlearn import MPSClassifier
from tnlearn.backend import get_backend
from tnlearn.distributed import get_comm, make_shard
from tnlearn.embeddings import embed
from tnlearn.stages.mps import pca_init_cores
sys.path.insert(0, sys.argv[2])
from test_distributed import PARAMS, _data

comm = get_comm("mpi")
X, y = _data()
out = {}
for i, params in enumerate(PARAMS):
    # the first through the hyperparameter, the others through fit(comm=...)
    if i == 0:
        clf = MPSClassifier(distributed="mpi", **params).fit(X, y, eval_set=(X[:40], y[:40]))
    else:
        clf = MPSClassifier(**params).fit(X, y, eval_set=(X[:40], y[:40]), comm=comm)
    out[f"dec{i}"] = clf.decision_function(X)
    out[f"lognorm{i}"] = np.array(clf.head_.log_norm)
    for k, c in enumerate(clf.head_.cores):
        out[f"core{i}_{k}"] = c
    out[f"hist{i}"] = np.array(json.dumps([{k: v for k, v in vars(r).items() if k != "seconds"}
                                           for r in clf.history_.records]))
# the PCA initialisation on its own: density matrices summed over the ranks
be = get_backend("numpy")
shard = make_shard(comm, len(X), be)
phi = np.ascontiguousarray(embed(X, "trig", dtype=np.float64).transpose(1, 0, 2)[:, shard.start:shard.stop])
cores, _ = pca_init_cores(phi, 4, 5, np.random.default_rng(0), be, shard=shard)
for k, c in enumerate(cores):
    out[f"pca_{k}"] = c
# ranks given different data must all refuse
X_bad = X.copy()
if comm.rank == 1:
    X_bad[0, 0] = 0.5 * X_bad[0, 0]
try:
    MPSClassifier(max_bond=3, n_sweeps=1, distributed="mpi").fit(X_bad, y)
    out["mismatch"] = np.array("no error")
except ValueError as exc:
    out["mismatch"] = np.array(str(exc))
np.savez(sys.argv[1] + f"/rank{comm.rank}.npz", **out)
"""


def _align_sign_gauge(ref, cores):
    """``cores`` with the per-bond sign gauge of ``ref`` (label on site 0, sites 1.. right-canonical)."""
    cores = [c.copy() for c in cores]
    for i in range(len(cores) - 1, 0, -1):  # bond i sits between sites i - 1 and i
        flat_ref, flat = ref[i].reshape(ref[i].shape[0], -1), cores[i].reshape(cores[i].shape[0], -1)
        signs = np.where(np.sum(flat_ref * flat, axis=1) < 0, -1.0, 1.0)
        cores[i] = cores[i] * signs.reshape((-1,) + (1,) * (cores[i].ndim - 1))
        cores[i - 1] = cores[i - 1] * signs
    return cores


@pytest.fixture(scope="module")
def mpi_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi")
    script = out / "run_fit.py"
    script.write_text(textwrap.dedent(SCRIPT))
    _run_mpi([sys.executable, str(script), str(out), str(Path(__file__).parent)], cwd=out)
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]


@pytest.mark.parametrize("i", range(len(PARAMS)))
def test_two_ranks_match_one_process(mpi_results, i):
    X, y = _data()
    serial = MPSClassifier(**PARAMS[i]).fit(X, y, eval_set=(X[:40], y[:40]))
    for res in mpi_results:  # every rank holds the same model
        dec = res[f"dec{i}"]
        ref = serial.decision_function(X)
        np.testing.assert_array_equal(np.argmax(dec, axis=1), np.argmax(ref, axis=1))
        np.testing.assert_allclose(dec, ref, rtol=TOL, atol=TOL * np.abs(ref).max())
        assert float(res[f"lognorm{i}"]) == pytest.approx(serial.head_.log_norm, rel=TOL, abs=TOL)
        cores = [res[f"core{i}_{k}"] for k in range(len(serial.head_.cores))]
        ref_cores = [np.asarray(c) for c in serial.head_.cores]
        for a, b in zip(_align_sign_gauge(ref_cores, cores), ref_cores):
            np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
        history = json.loads(str(res[f"hist{i}"]))
        assert len(history) == len(serial.history_)
        for got, want in zip(history, serial.history_.records):
            assert got["loss"] == pytest.approx(want.loss, rel=TOL)
            assert (got["train_accuracy"], got["test_accuracy"]) == (want.train_accuracy, want.test_accuracy)
            assert got["bond_dims"] == want.bond_dims
            np.testing.assert_allclose(got["truncation_errors"], want.truncation_errors, rtol=1e-6, atol=TOL)
    for k in (key for key in mpi_results[0] if key.startswith(f"core{i}_")):
        np.testing.assert_array_equal(mpi_results[0][k], mpi_results[1][k])  # bit-identical across ranks


def test_two_rank_pca_init_matches_one_process(mpi_results):
    """Same principal subspaces: sites 1.. equal up to the sign of each eigenvector.

    (The label site is a random tensor in the basis of bond 1, so a sign that LAPACK
    picks differently makes it a different, equally random, start: see the README.)
    """
    from tnlearn.embeddings import embed
    from tnlearn.stages.mps import pca_init_cores

    X, _ = _data()
    phi = np.ascontiguousarray(embed(X, "trig", dtype=np.float64).transpose(1, 0, 2))
    ref, _ = pca_init_cores(phi, 4, 5, np.random.default_rng(0), get_backend("numpy"))
    got = [mpi_results[0][f"pca_{k}"] for k in range(len(ref))]
    aligned = _align_sign_gauge(ref, got)
    for a, b in zip(aligned[1:], ref[1:]):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)


def test_ranks_with_different_data_refuse(mpi_results):
    for res in mpi_results:
        assert "different training data" in str(res["mismatch"])


def test_cli_train_under_mpiexec(tmp_path):
    out = tmp_path / "run"
    proc = _run_mpi([sys.executable, "-m", "tnlearn.cli", "train", "--bond-dim", "10", "--sweeps", "2",
                     "--n-train", "300", "--out", str(out)], cwd=tmp_path)
    assert proc.stdout.count("test accuracy") == 1  # only rank 0 reports
    assert proc.stdout.count("sweep   2") == 1
    run = json.loads((out / "run.json").read_text())
    assert run["mpi_ranks"] == 2 and run["status"] == "finished"
    history = json.loads((out / "history.json").read_text())
    assert [r["sweep"] for r in history] == [1, 2]
    assert run["final_test_accuracy"] == history[-1]["test_accuracy"] > 0.5
    assert (out / "model.npz").is_file() and not list(out.glob(".*.tmp"))


TN_CNN_SCRIPT = """
import sys
import numpy as np
from sklearn.datasets import load_digits
from tnlearn import TNCNNClassifier
from tnlearn.distributed import get_comm

comm = get_comm("mpi")
X, y = load_digits(return_X_y=True)
X, y = X[:301] / 16, y[:301]
clf = TNCNNClassifier(channels=(4,), n_hidden=16, n_sweeps=2, dtype="float64", random_state=0,
                      learning_rate=2e-2).fit(X, y, comm=comm)
if comm.rank == 0:
    np.savez(sys.argv[1], dec=clf.decision_function(X), loss=clf.history_.column("loss"),
             rejected=clf.history_.column("rejected_updates"))
"""


def test_tn_cnn_under_mpiexec_trains_the_network_one_process_trains(tmp_path):
    """Two ranks, each with half the samples: the same minibatches, summed gradients, the same network."""
    from sklearn.datasets import load_digits

    from tnlearn import TNCNNClassifier

    script = tmp_path / "tn_cnn_mpi.py"
    script.write_text(TN_CNN_SCRIPT)
    _run_mpi([sys.executable, str(script), str(tmp_path / "mpi.npz")], cwd=tmp_path)
    got = np.load(tmp_path / "mpi.npz")
    X, y = load_digits(return_X_y=True)
    X, y = X[:301] / 16, y[:301]
    one = TNCNNClassifier(channels=(4,), n_hidden=16, n_sweeps=2, dtype="float64", random_state=0,
                          learning_rate=2e-2).fit(X, y)
    np.testing.assert_allclose(got["loss"], one.history_.column("loss"), rtol=1e-9)
    np.testing.assert_array_equal(got["rejected"], one.history_.column("rejected_updates"))
    np.testing.assert_allclose(got["dec"], one.decision_function(X), rtol=1e-7, atol=1e-9)


def test_cli_trains_tn_cnn_under_mpiexec(tmp_path):
    out = tmp_path / "run"
    proc = _run_mpi([sys.executable, "-m", "tnlearn.cli", "train", "--model", "tn-cnn", "--cnn-channels", "4",
                     "--n-hidden", "16", "--sweeps", "1", "--n-train", "300", "--out", str(out)], cwd=tmp_path)
    assert proc.stdout.count("test accuracy") == 1 and proc.stdout.count("sweep   1") == 1  # rank 0 reports
    run = json.loads((out / "run.json").read_text())
    assert run["mpi_ranks"] == 2 and run["status"] == "finished" and run["options"]["model"] == "tn-cnn"
