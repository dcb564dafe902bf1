"""The compiled per-sample kernels against plain numpy (the fast path against a reference)."""

import numpy as np
import pytest

from tnlearn._kernels import row_contract, row_outer


@pytest.mark.parametrize("q", [1, 2, 3, 20])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_outer_equals_einsum(rng, q, dtype):
    a = rng.standard_normal((37, 11)).astype(dtype)
    b = rng.standard_normal((37, q)).astype(dtype)
    expected = np.einsum("np,nq->npq", a, b).reshape(37, 11 * q)
    out = row_outer(a, b)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    buf = np.full((37, 11 * q), np.nan, dtype)
    assert row_outer(a, b, out=buf) is buf
    np.testing.assert_allclose(buf, expected, rtol=1e-6)


def test_row_outer_of_strided_views(rng):
    """Environment slots are views with a row stride wider than the bond."""
    big = rng.standard_normal((9, 30))
    a, b = big[:, :7], rng.standard_normal((9, 2))
    np.testing.assert_allclose(row_outer(a, b), np.einsum("np,nq->npq", a, b).reshape(9, 14))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_contract_equals_einsum(rng, dtype):
    t = rng.standard_normal((23, 10, 20)).astype(dtype)
    r = rng.standard_normal((23, 20)).astype(dtype)
    np.testing.assert_allclose(row_contract(t, r), np.einsum("nmq,nq->nm", t, r), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_normalise_divides_rows_in_place_and_returns_log_norms(rng, dtype):
    from tnlearn._kernels import row_normalise

    env = rng.standard_normal((17, 6)).astype(dtype) * np.exp(rng.uniform(-30, 30, (17, 1))).astype(dtype)
    env[3] = 0.0
    before = env.astype(np.float64)
    logs = row_normalise(env)
    norms = np.linalg.norm(before, axis=1)
    assert logs.dtype == np.float64
    np.testing.assert_allclose(logs[norms > 0], np.log(norms[norms > 0]), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(env[norms > 0], axis=1), 1.0, rtol=1e-5)
    assert np.all(env[3] == 0) and logs[3] == pytest.approx(np.log(1e-300))


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_residual_outer_equals_the_three_numpy_steps(rng, loss, dtype):
    """Contraction, loss residual and gradient operand fused into one pass: same numbers."""
    from tnlearn._kernels import row_residual_outer

    n, L, q = 29, 10, 7
    t = rng.standard_normal((n, L, q)).astype(dtype)
    r = rng.standard_normal((n, q)).astype(dtype)
    y = np.eye(L, dtype=dtype)[rng.integers(0, L, n)]
    scale = rng.uniform(0.1, 2.0, n).astype(dtype)
    f_ref = np.einsum("nlq,nq->nl", t, r) * scale[:, None]
    if loss == "mse":
        w = y - f_ref
    else:
        e = np.exp(f_ref - f_ref.max(axis=1, keepdims=True))
        w = y - e / e.sum(axis=1, keepdims=True)
    operand_ref = np.einsum("nl,nq->nlq", w * scale[:, None], r)
    f = np.full((n, L), np.nan, dtype)
    assert row_residual_outer(t, r, y, scale, loss, f) is f
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f, f_ref, **tol)
    np.testing.assert_allclose(t, operand_ref, **tol)  # t was overwritten in place
    with pytest.raises(ValueError, match="hinge"):
        row_residual_outer(t, r, y, scale, "hinge", f)


@pytest.mark.parametrize("q,r", [(2, 2), (3, 2), (1, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_outer3_equals_two_row_outers(rng, q, r, dtype):
    from tnlearn._kernels import row_outer3

    a, b, c = (rng.standard_normal((19, k)).astype(dtype) for k in (6, q, r))
    expected = np.einsum("np,nq,nr->npqr", a, b, c).reshape(19, -1)
    np.testing.assert_allclose(row_outer3(a, b, c), expected, rtol=1e-6)
    np.testing.assert_array_equal(row_outer3(a, b, c), row_outer(row_outer(a, b), c))


def test_array_module_kernels_equal_the_compiled_ones(rng):
    """The cupy backend's kernels (array operations of its module), run here with numpy."""
    from tnlearn import _kernels
    from tnlearn.backend import array_module_kernels

    outer, outer3, contract, normalise, residual_outer, loss_sum = array_module_kernels(np)
    a, b, c = rng.standard_normal((13, 5)), rng.standard_normal((13, 2)), rng.standard_normal((13, 2))
    np.testing.assert_allclose(outer(a, b), _kernels.row_outer(a, b), rtol=1e-14)
    for out in (np.empty((13, 10)), np.empty((13, 20))[:, ::2]):  # into a contiguous and a strided out
        assert outer(a, b, out=out) is out
        np.testing.assert_allclose(out, _kernels.row_outer(a, b), rtol=1e-14)
    np.testing.assert_allclose(outer3(a, b, c), _kernels.row_outer3(a, b, c), rtol=1e-14)
    t, r = rng.standard_normal((13, 4, 3)), rng.standard_normal((13, 3))
    np.testing.assert_allclose(contract(t, r), _kernels.row_contract(t, r), rtol=1e-12)
    env = rng.standard_normal((13, 6))
    env[2] = 0
    env2 = env.copy()
    np.testing.assert_allclose(normalise(env), _kernels.row_normalise(env2), rtol=1e-12)
    np.testing.assert_allclose(env, env2, rtol=1e-12)
    y = np.eye(4)[rng.integers(0, 4, 13)]
    scale = rng.uniform(0.5, 2, 13)
    for loss in ("mse", "cross_entropy"):
        t1, t2 = t.copy(), t.copy()
        f1, f2 = np.empty((13, 4)), np.empty((13, 4))
        residual_outer(t1, r, y, scale, loss, f1)
        _kernels.row_residual_outer(t2, r, y, scale, loss, f2)
        np.testing.assert_allclose(f1, f2, rtol=1e-12)
        np.testing.assert_allclose(t1, t2, rtol=1e-12, atol=1e-14)
        for log_scale in (None, rng.standard_normal(13)):
            np.testing.assert_allclose(loss_sum(f1, y, loss, log_scale), _kernels.loss_sum(f1, y, loss, log_scale),
                                       rtol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_sum_is_the_float64_loss_of_the_rescaled_outputs(rng, loss, dtype):
    from scipy.special import log_softmax

    from tnlearn import _kernels
    from tnlearn.backend import get_backend

    f = rng.standard_normal((301, 5)).astype(dtype)
    y = np.eye(5, dtype=dtype)[rng.integers(0, 5, 301)]
    log_scale = rng.uniform(-2, 2, 301)
    z = f.astype(np.float64) * np.exp(log_scale)[:, None]
    expected = 0.5 * np.sum((z - y) ** 2) if loss == "mse" else -np.sum(y * log_softmax(z, axis=1))
    assert _kernels.loss_sum(f, y, loss, log_scale) == pytest.approx(expected, rel=1e-12)
    assert _kernels.loss_sum(f, y, loss) == pytest.approx(_kernels.loss_sum(f, y, loss, np.zeros(301)), rel=1e-15)
    import dataclasses

    from tnlearn.host_threads import ChunkWorkers

    backend = dataclasses.replace(get_backend("numpy"), workers=ChunkWorkers(3))
    with backend.host_threads() as n_workers:  # chunks shared among three threads: the same sum to rounding
        total = backend.loss_total(f, y, loss, log_scale, chunk_size=32)
    assert n_workers == 3 and total == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="'hinge'"):
        _kernels.loss_sum(f, y, "hinge")
    with pytest.raises(ValueError, match=r"targets of shape \(300, 5\)"):
        _kernels.loss_sum(f, y[:300], loss)
    with pytest.raises(ValueError, match="one per sample"):
        _kernels.loss_sum(f, y, loss, log_scale[:5])


def test_a_sweep_on_the_array_module_kernels_matches_the_compiled_backend(rng):
    """The whole engine on the cupy backend's code path (with numpy arrays) gives the same model."""
    from tnlearn import MPSClassifier
    from tnlearn.backend import Backend, array_module_kernels

    X = rng.random((90, 12))
    y = (X[:, :4].sum(axis=1) * 2).astype(int) % 3
    kw = dict(max_bond=4, n_sweeps=2, dtype="float64", random_state=0)
    compiled = MPSClassifier(**kw).fit(X, y)
    array_ops = MPSClassifier(**kw, backend=Backend("numpy", np, *array_module_kernels(np))).fit(X, y)
    np.testing.assert_allclose(array_ops.decision_function(X), compiled.decision_function(X), rtol=1e-8, atol=1e-10)
