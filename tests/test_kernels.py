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
