"""The TT convolution stage: patches, pooling and their adjoints, gradients, and the tn-cnn model."""

from __future__ import annotations

import types

import numpy as np
import pytest

from tnlearn.stages.tt import TTMatrix
from tnlearn.stages.tt_conv import (
    TTConv,
    channel_factors,
    extract_patches,
    extract_patches_adjoint,
    max_pool,
    max_pool_adjoint,
    output_factors,
)


#: numpy under another name: the array-module code that other backends (cupy) run, instead of the numba kernels
GENERIC = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
PATHS = pytest.mark.parametrize("xp", [np, GENERIC], ids=["numba", "array-module"])


def _naive_patches(x, k, stride, padding):
    n, H, W, c = x.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    out = np.zeros((n, Ho, Wo, k * k * c))
    for i in range(Ho):
        for j in range(Wo):
            out[:, i, j] = xp[:, i * stride : i * stride + k, j * stride : j * stride + k].reshape(n, -1)
    return out


@PATHS
@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (2, 2, 0), (3, 2, 1), (5, 1, 0)])
def test_patches_match_a_loop_and_the_adjoint_is_exact(k, stride, padding, xp):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 3))
    cols = extract_patches(x, (k, k), stride, padding, xp)
    np.testing.assert_array_equal(cols, _naive_patches(x, k, stride, padding))
    g = rng.standard_normal(cols.shape)
    # <P x, g> == <x, P^T g>
    back = extract_patches_adjoint(g, x.shape, (k, k), stride, padding, xp)
    np.testing.assert_allclose(np.sum(cols * g), np.sum(x * back), rtol=1e-12)


def test_one_patch_over_the_whole_map_is_the_flattened_map():
    x = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(extract_patches(x, (3, 4)), x.reshape(2, 1, 1, 60))


@PATHS
@pytest.mark.parametrize("size", [12, 13])  # 144 / 169 window positions: more than an int8 index holds
def test_large_pooling_windows_send_the_gradient_to_the_maximum(xp, size):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, size, size, 2))
    out, arg = max_pool(x, size, xp)
    dx = max_pool_adjoint(np.ones_like(out), arg, x.shape, size, xp)
    np.testing.assert_array_equal(dx, (x == x.max(axis=(1, 2), keepdims=True)).astype(float))


@PATHS
def test_max_pool_and_its_adjoint(xp):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 4, 3))  # 5 rows: the last one is dropped by 2 x 2 pooling
    out, arg = max_pool(x, 2, xp)
    want = x[:, :4].reshape(2, 2, 2, 2, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(out, want)
    g = rng.standard_normal(out.shape)
    dx = max_pool_adjoint(g, arg, x.shape, 2, xp)
    assert np.all(dx[:, 4] == 0)
    np.testing.assert_allclose(np.sum(out * g), np.sum(x * dx), rtol=1e-12)  # the selection is linear for fixed argmax
    assert np.count_nonzero(dx) == out.size


@pytest.mark.parametrize("c,want", [(1, ()), (3, (3,)), (16, (16,)), (32, (8, 4)), (64, (8, 8)), (17, (17,))])
def test_channel_factors(c, want):
    assert channel_factors(c) == want


def test_output_factors_keep_the_product_with_the_larger_factors_at_the_ends():
    assert output_factors(32, 3) == (4, 2, 4)
    assert output_factors(512, 4) == (8, 4, 4, 4)
    for c, k in [(10, 2), (48, 3), (7, 3)]:
        assert np.prod(output_factors(c, k)) == c


def _loss(stage, x, g, block=None, j=None, bias=None):
    return float(np.sum(stage.forward(x, block, j, bias)[0] * g))


@pytest.mark.parametrize("pool,padding", [(1, 1), (2, 1), (2, 0)])
def test_backward_gives_the_gradients_of_block_bias_and_input(pool, padding):
    rng = np.random.default_rng(2)
    stage = TTConv.random((6, 6, 4), 6, (3, 3), rng, max_rank=3, padding=padding, pool=pool, dtype=np.float64)
    stage.bias = rng.standard_normal(6) * 0.1
    x = rng.standard_normal((2, 6, 6, 4))
    out, cache = stage.forward(x)
    g = rng.standard_normal(out.shape)
    j = 1
    block = stage.merge(j)
    out_b, cache_b = stage.forward(x, block, j)
    np.testing.assert_allclose(out_b, out, atol=1e-12)
    d_x, d_block, d_bias = stage.backward(g, cache_b, j)
    eps = 1e-6
    for name, base, grad in (("block", block, d_block), ("bias", stage.bias, d_bias), ("x", x, d_x)):
        direction = rng.standard_normal(base.shape)

        def at(t):
            moved = base + t * direction
            if name == "block":
                return _loss(stage, x, g, moved, j)
            if name == "bias":
                return _loss(stage, x, g, block, j, moved)
            return _loss(stage, moved, g, block, j)

        numeric = (at(eps) - at(-eps)) / (2 * eps)
        assert np.sum(grad * direction) == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


def test_a_dense_stage_is_the_matrix_product():
    rng = np.random.default_rng(3)
    stage = TTConv.random((3, 2, 4), 10, (3, 2), rng, max_rank=None, relu=False, dtype=np.float64)
    x = rng.standard_normal((5, 3, 2, 4))
    out, _ = stage.forward(x)
    np.testing.assert_allclose(out.reshape(5, 10), x.reshape(5, -1) @ stage.tt.to_dense(), atol=1e-12)


def test_stage_checks_shapes():
    tt = TTMatrix.random((3, 3), (2, 2), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="bias has shape"):
        TTConv(tt, np.zeros(3, np.float32), (3, 3))
    with pytest.raises(ValueError, match="not a multiple"):
        TTConv(tt, np.zeros(4, np.float32), (2, 2))
