"""The GPU code path (``backend="cupy"``), checked without and with a GPU.

Every test that trains runs twice: on an *emulated* device (numpy arrays that
refuse what cupy refuses and count every host <-> device round trip, see
``device_emulation.py``), which runs everywhere, and on a real CUDA GPU through
cupy, which is skipped where there is none.
"""

from __future__ import annotations

import numpy as np
import pytest
from device_emulation import DeviceArray, DeviceModule, emulated_device_backend

from tnlearn.backend import BackendUnavailableError, get_backend


def _real_gpu():
    """The cupy backend, or the reason it cannot run here."""
    try:
        return get_backend("cupy"), None
    except BackendUnavailableError as exc:
        return None, str(exc)


GPU, NO_GPU_REASON = _real_gpu()
needs_gpu = pytest.mark.skipif(GPU is None, reason=f"no usable CUDA GPU: {NO_GPU_REASON}")
needs_no_gpu = pytest.mark.skipif(GPU is not None, reason="this machine has a GPU: the no-GPU error cannot occur")


@pytest.fixture(params=["emulated", pytest.param("cupy", marks=needs_gpu)])
def device(request):
    """``(backend, reference backend, rtol)``: a device, the host run it must reproduce, how closely.

    The emulated device does the cupy backend's arithmetic on numpy, so it must
    reproduce the numpy backend running the same array-module kernels to the
    last bit; a real GPU rounds differently (cuBLAS), so it is held to the
    compiled numpy backend within float64 rounding amplified by two sweeps.
    """
    from tnlearn.backend import Backend, array_module_kernels

    if request.param == "emulated":
        return emulated_device_backend()[0], Backend("numpy", np, *array_module_kernels(np)), 0.0
    return GPU, get_backend("numpy"), 1e-7


@pytest.fixture(scope="module")
def small_digits(digits):
    # 500 images: at some sizes (400 here) the PCA initialisation meets a tie in a density
    # matrix's spectrum at the cut, and rounding-level differences pick different kept
    # vectors; sweeps then amplify them on any two machines, GPU or not
    X_train, X_test, y_train, y_test = digits
    return X_train[:500], y_train[:500], X_test[:150], y_test[:150]


# -- the emulator itself: a test of the device path is only as strict as it is ----------
def test_the_emulated_device_refuses_what_cupy_refuses():
    xp = DeviceModule()
    a = xp.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError, match="implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="host numpy array"):
        a + np.ones(3)
    with pytest.raises(TypeError, match="host numpy array"):
        xp.matmul(np.ones((3, 3)), a.T)
    with pytest.raises(TypeError, match="host numpy array"):
        a[0] = np.zeros(3)
    with pytest.raises(TypeError, match="row by row"):
        list(a)
    total = a.sum()
    assert isinstance(total, DeviceArray) and total.shape == ()  # reductions stay on the device
    assert xp.transfers.syncs == 0
    assert float(total) == 15.0 and xp.transfers.syncs == 1
    np.testing.assert_array_equal(xp.asnumpy(a @ a.T), [[5, 14], [14, 50]])
    assert (xp.transfers.to_device, xp.transfers.to_host) == (1, 1)


def test_the_emulated_device_refuses_numpy_only_names_where_cupy_is_importable():
    xp = DeviceModule()
    if not xp.checks_cupy_api:
        pytest.skip("cupy is not importable here: the emulator cannot check names against its API")
    a = xp.asarray(np.arange(4.0))
    with pytest.raises(AttributeError, match=r"cupy has no xp\.busday_count"):
        xp.busday_count  # noqa: B018 (a numpy function cupy lacks)
    assert float(xp.linalg.norm(a)) == pytest.approx(np.sqrt(14.0))  # and cupy's names pass


# -- the same models as on numpy -------------------------------------------------------
MPS_CONFIGS = {
    "default": {},
    "float32": {"dtype": "float32"},
    "svd-split": {"truncation": "svd"},
    "cg": {"solver": "cg", "n_iter": 2},
    "cross-entropy": {"loss": "cross_entropy"},
    "unnormalised": {"sample_norm": False},
}


@pytest.mark.parametrize("config", list(MPS_CONFIGS), ids=list(MPS_CONFIGS))
def test_mps_sweeps_on_the_device_match_numpy(device, small_digits, config):
    from tnlearn import MPSClassifier

    backend, reference, rtol = device
    X, y, X_test, y_test = small_digits
    kw = {"max_bond": 6, "n_sweeps": 2, "dtype": "float64", "random_state": 0, **MPS_CONFIGS[config]}
    if kw["dtype"] == "float32" and rtol:
        rtol = 1e-3  # single precision on a GPU: cuBLAS rounds differently
    host = MPSClassifier(**kw, backend=reference).fit(X, y, eval_set=(X_test, y_test))
    dev = MPSClassifier(**kw, backend=backend).fit(X, y, eval_set=(X_test, y_test))
    np.testing.assert_allclose(dev.decision_function(X_test), host.decision_function(X_test), rtol=rtol, atol=rtol / 100)
    for a, b in zip(dev.history_.records, host.history_.records):
        assert a.loss == pytest.approx(b.loss, rel=rtol, abs=0)
        if rtol == 0:  # the same arithmetic: the same decisions (a GPU may break a spectral tie otherwise)
            assert a.bond_dims == b.bond_dims and a.test_accuracy == b.test_accuracy


def test_warm_start_and_probabilities_on_the_device(device, small_digits):
    from tnlearn import MPSClassifier

    backend, reference, rtol = device
    X, y, X_test, _ = small_digits
    fits = []
    for be in (reference, backend):
        kw = dict(max_bond=6, n_sweeps=1, dtype="float64", random_state=0, loss="cross_entropy", backend=be)
        model = MPSClassifier(**kw).fit(X, y)
        fits.append(model.set_params(warm_start=True, n_sweeps=1).fit(X, y))  # a second sweep, continued
    assert len(fits[1].history_) == 2
    np.testing.assert_allclose(fits[1].predict_proba(X_test), fits[0].predict_proba(X_test), rtol=rtol, atol=rtol / 100)


@pytest.mark.parametrize("model", ["conv-mps", "tt-net", "tn-cnn"])
def test_staged_models_on_the_device_match_numpy(device, small_digits, model):
    from tnlearn import ConvMPSClassifier, TNCNNClassifier, TTNetClassifier

    backend, reference, rtol = device
    X, y, X_test, _ = small_digits
    if model == "conv-mps":
        make = lambda **k: ConvMPSClassifier(max_bond=6, n_sweeps=2, image_shape=(8, 8), **k)  # noqa: E731
    elif model == "tn-cnn":
        make = lambda **k: TNCNNClassifier(channels=(4, 8), n_hidden=16, n_sweeps=1, **k)  # noqa: E731
        # numpy runs numba kernels for the patches and pooling, a device the array-module code: the same
        # maths summed in another order
        rtol = max(rtol, 1e-10)
    else:
        make = lambda **k: TTNetClassifier(n_sweeps=1, **k)  # noqa: E731
    host = make(dtype="float64", random_state=0, backend=reference).fit(X, y)
    dev = make(dtype="float64", random_state=0, backend=backend).fit(X, y)
    np.testing.assert_allclose(dev.decision_function(X_test), host.decision_function(X_test), rtol=rtol, atol=rtol / 100)


@needs_gpu
def test_float32_sweeps_on_a_gpu_learn_as_well_as_on_the_cpu(small_digits):
    """Single precision: not the same rounding on the two machines, the same learning."""
    from tnlearn import MPSClassifier

    X, y, X_test, y_test = small_digits
    host = MPSClassifier(max_bond=10, n_sweeps=3, random_state=0).fit(X, y)
    dev = MPSClassifier(max_bond=10, n_sweeps=3, random_state=0, backend="cupy").fit(X, y)
    assert abs(dev.score(X_test, y_test) - host.score(X_test, y_test)) <= 0.02
    assert dev.history_[-1].loss == pytest.approx(host.history_[-1].loss, rel=0.05)


# -- what crosses between host and device ----------------------------------------------
def _traffic(X, y, n_sweeps, chunk_size, **kw):
    from tnlearn import MPSClassifier

    backend, log = emulated_device_backend()
    MPSClassifier(max_bond=5, n_sweeps=n_sweeps, dtype="float64", random_state=0, chunk_size=chunk_size,
                  backend=backend, **kw).fit(X, y)
    return np.array([log.to_device, log.to_host, log.syncs])


@pytest.mark.parametrize(("kw", "grams_down", "factors_up", "reads"),
                         [({}, 1, 1, 0), ({"truncation": "svd", "precondition": False}, 0, 0, 0),
                          ({"sample_norm": False}, 2, 2, 1)],
                         ids=["default", "svd-unpreconditioned", "unnormalised"])
def test_a_sweep_talks_to_the_host_a_fixed_few_times_per_bond(small_digits, kw, grams_down, factors_up, reads):
    """Bond update and split stay on the device but for a few small transfers per bond.

    Per bond at most: the Gram matrix of the fresh environment (both without
    sample normalisation, where Grams are not reused; none without
    preconditioner and data-metric split) and the merged block to the host for
    the small dense algebra of the preconditioner and the split, and the
    safeguard's objective values (one transfer); the fresh Gram's
    preconditioner factor (the reused Gram keeps its device copy) and the
    two new cores back; no scalar read (the block's norm is taken on the host),
    but for the data set's log scale without sample normalisation.  A bond
    whose update raised the objective also compares it with the old block
    (the old block down, its truncation up, two values read, and without
    sample normalisation one more scalar): at most once per bond.  Never any
    traffic per chunk of samples.
    """
    X, y = small_digits[0][:300], small_digits[1][:300]
    n_bonds_per_sweep = 2 * (X.shape[1] - 1)
    one, two = (_traffic(X, y, n, chunk_size=4096, **kw) for n in (1, 2))
    per_sweep = two - one
    assert np.array_equal(_traffic(X, y, 2, chunk_size=16, **kw), two)  # 19 chunks: the same traffic
    to_device, to_host, syncs = per_sweep / n_bonds_per_sweep
    once = 1 / n_bonds_per_sweep  # a sweep's accuracy read
    check = 1  # the old-block comparison, at most once per bond
    assert to_device <= factors_up + 2 + check + 1e-9
    assert to_host <= grams_down + 2 + 2 * check + once + 1e-9
    assert syncs <= reads * (1 + check) + once + 1e-9


# -- at the edges: numpy out ----------------------------------------------------------
def test_a_device_trained_model_hands_out_host_arrays(small_digits, tmp_path):
    from tnlearn import MPSClassifier
    from tnlearn.io import load_model, save_model

    backend, _ = emulated_device_backend()
    X, y, X_test, _ = small_digits
    model = MPSClassifier(max_bond=6, n_sweeps=1, dtype="float64", random_state=0, backend=backend).fit(X, y)
    scores = model.decision_function(X_test)
    assert type(scores) is np.ndarray
    assert all(type(t.data) is np.ndarray for t in model.mps_)  # quimb objects hold numpy arrays
    save_model(model, tmp_path / "model.npz")
    loaded = load_model(tmp_path / "model.npz", backend=backend)
    np.testing.assert_array_equal(loaded.decision_function(X_test), scores)


def test_quimb_network_with_device_arrays_on_request(device, small_digits):
    """``head_to_quimb(head, device=True)``: the network on the device, as copies the model does not share."""
    from tnlearn import MPSClassifier, head_to_quimb

    backend, _, _ = device
    X, y, X_test, _ = small_digits
    model = MPSClassifier(max_bond=6, n_sweeps=1, dtype="float64", random_state=0, backend=backend).fit(X, y)
    on_device, on_host = head_to_quimb(model.head_, device=True), model.mps_
    for a, b in zip(on_device, on_host):
        assert type(a.data) is not np.ndarray and type(b.data) is np.ndarray
        np.testing.assert_array_equal(backend.asnumpy(a.data), b.data)
    before = model.decision_function(X_test[:5])
    on_device.tensors[0].modify(data=on_device.tensors[0].data * 0)
    np.testing.assert_array_equal(model.decision_function(X_test[:5]), before)  # copies, not the model's cores
    if backend is GPU:  # quimb contracts cupy arrays itself (autoray): the same outputs as the model
        from tnlearn import embed, product_state

        phi = backend.asarray(embed(X_test[:1], "trig", dtype=np.float64)[0])
        scores = (head_to_quimb(model.head_, device=True) & product_state(phi)) ^ all
        np.testing.assert_allclose(backend.asnumpy(scores.data), before[0], rtol=1e-8)


@needs_no_gpu
def test_a_gpu_trained_model_loads_on_a_machine_without_one(small_digits, tmp_path):
    from tnlearn import MPSClassifier
    from tnlearn.io import load_model, save_model

    backend, _ = emulated_device_backend()  # named "cupy": the file says the model was trained on a GPU
    X, y, X_test, _ = small_digits
    model = MPSClassifier(max_bond=6, n_sweeps=1, dtype="float64", random_state=0, backend=backend).fit(X, y)
    save_model(model, tmp_path / "model.npz")
    with pytest.warns(UserWarning, match=r"trained with backend='cupy'.*loaded on backend='numpy'"):
        loaded = load_model(tmp_path / "model.npz")
    assert loaded.head_.backend.name == "numpy" and loaded.backend == "numpy"
    expected = model.decision_function(X_test)
    np.testing.assert_allclose(loaded.decision_function(X_test), expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


@needs_no_gpu
def test_asking_for_the_gpu_without_one_is_a_clear_error(small_digits, tmp_path, capsys):
    from tnlearn import MPSClassifier
    from tnlearn.cli import main

    X, y, _, _ = small_digits
    with pytest.raises(BackendUnavailableError, match=r"backend='numpy'"):
        MPSClassifier(backend="cupy").fit(X, y)
    assert main(["train", "--backend", "cupy", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tnlearn: error: backend='cupy'") and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # failed before loading data or writing anything


def test_a_data_parallel_sweep_on_the_device_stages_its_messages_through_the_host(rng):
    """With a shard (here one rank) every reduction and broadcast goes device -> host -> device.

    mpi4py then needs no CUDA-aware MPI; the sweep must equal the numpy one.
    """
    from tnlearn.backend import Backend, array_module_kernels
    from tnlearn.distributed import SerialComm, Shard
    from tnlearn.solvers import SolverOptions
    from tnlearn.stages.mps import MPSHead, pca_init_cores
    from tnlearn.sweeps import SweepOptions, build_environments, full_sweep

    phi = np.stack([np.cos(np.pi / 2 * rng.random((200, 8))), np.sin(np.pi / 2 * rng.random((200, 8)))], -1)
    phi = np.ascontiguousarray(phi.transpose(1, 0, 2))
    y = np.eye(3)[rng.integers(0, 3, 200)]
    opts = SweepOptions(max_bond=4, solver=SolverOptions(precondition=True, line_search_samples=50, gram_samples=70),
                        normalize_samples=False)
    device, log = emulated_device_backend()
    reference = Backend("numpy", np, *array_module_kernels(np))
    heads = []
    for be in (reference, device):
        shard = Shard(SerialComm(), 0, 200, 200, be)
        cores, log_norm = pca_init_cores(be.asarray(phi), 3, 4, np.random.default_rng(0), be, shard=shard)
        head = MPSHead(cores, 0, log_norm, be)
        phi_b, y_b = be.asarray(phi), be.asarray(y)
        envs = build_environments(head, phi_b, opts)
        full_sweep(head, envs, phi_b, y_b, opts, shard=shard)
        heads.append(head)
    assert heads[0].log_norm == heads[1].log_norm
    for a, b in zip(heads[0].cores, heads[1].cores):
        np.testing.assert_array_equal(a, device.asnumpy(b))
    assert log.to_host > 0


@needs_no_gpu
def test_a_gpu_run_evaluates_on_a_machine_without_one(tmp_path, capsys):
    """``tnlearn evaluate`` of a GPU-trained run: one warning line, then the evaluation."""
    from tnlearn import MPSClassifier
    from tnlearn.cli import main
    from tnlearn.datasets import flatten_images, load_dataset
    from tnlearn.io import save_model

    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--sweeps", "1", "--bond-dim", "4", "--out", str(run), "--quiet"]) == 0
    ds = load_dataset("digits")
    backend, _ = emulated_device_backend()  # named "cupy": the file says it was trained on a GPU
    model = MPSClassifier(max_bond=4, n_sweeps=1, random_state=0, backend=backend)
    save_model(model.fit(flatten_images(ds.X_train), ds.y_train), run / "model.npz")
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("tnlearn: warning: the model was trained "
                                                                     "with backend='cupy'")
    assert "correct" in captured.out
