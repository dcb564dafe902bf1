"""Property-based tests (hypothesis): IDX files and truncated splits.

The IDX properties extend ``tests/test_datasets.py`` (uint8 only) to every dtype
IDX stores, both byte orders and both compressions; the truncation properties
extend ``tests/test_truncation.py`` to every cutoff mode, both float dtypes and
rank-deficient matrices.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tnlearn.datasets import IDXFormatError, read_idx, write_idx
from tnlearn.gram import psd_sqrt
from tnlearn.truncation import CUTOFF_MODES, metric_truncated_split, truncated_svd

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def idx_arrays(draw):
    """An array of any IDX dtype (either byte order), 1-3 small dimensions, any values (NaN, -0.0, ...)."""
    dtype = np.dtype(draw(st.sampled_from(IDX_DTYPES)))
    arr = draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)))
    return arr.astype(dtype.newbyteorder(draw(st.sampled_from("<>"))))


def _write(tmp_path, arr, compress):
    path = tmp_path / "a.idx"
    write_idx(path, arr, compress=compress)
    return path


# --------------------------------------------------------------------------- IDX
@SETTINGS
@given(arr=idx_arrays(), compress=st.booleans())
def test_idx_round_trip_is_bit_identical(tmp_path, arr, compress):
    path = _write(tmp_path, arr, compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    out = read_idx(path)
    native = arr.dtype.newbyteorder("=")
    assert out.dtype == native and out.dtype.isnative and out.shape == arr.shape
    assert out.tobytes() == arr.astype(native).tobytes()  # bit for bit: NaN payloads, -0.0


@SETTINGS
@given(arr=idx_arrays(), compress=st.booleans(), data=st.data())
def test_any_truncation_of_an_idx_file_is_an_idx_format_error(tmp_path, arr, compress, data):
    path = _write(tmp_path, arr, compress)
    blob = path.read_bytes()
    cut = data.draw(st.integers(0, len(blob) - 1), label="cut")
    path.write_bytes(blob[:cut])
    with pytest.raises(IDXFormatError, match="re-download it or point --data-dir"):
        read_idx(path)


# -------------------------------------------------------------------- truncation
@st.composite
def matrices(draw):
    """A float64 or float32 matrix of up to 8 x 8 and any rank (0 gives the zero matrix)."""
    m, n = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    rank = draw(st.integers(0, min(m, n)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    M = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    return M.astype(draw(st.sampled_from([np.float64, np.float32])))


def _tol(dtype):
    return 1e-10 if dtype == np.float64 else 1e-5


cutoffs = st.one_of(st.just(0.0), st.floats(1e-6, 0.9))
truncation_cases = given(
    M=matrices(),
    max_bond=st.one_of(st.none(), st.integers(1, 9)),
    cutoff=cutoffs,
    cutoff_mode=st.sampled_from(CUTOFF_MODES),
)


@SETTINGS
@truncation_cases
def test_truncated_svd_invariants(M, max_bond, cutoff, cutoff_mode):
    U, s, Vh, info = truncated_svd(M, max_bond=max_bond, cutoff=cutoff, cutoff_mode=cutoff_mode)
    k, s_all, tol = info.kept, info.singular_values.astype(np.float64), _tol(M.dtype)
    m, n = M.shape

    # shapes and the bond cap
    assert 1 <= k <= min(m, n) and (max_bond is None or k <= max_bond)
    assert U.shape == (m, k) and s.shape == (k,) and Vh.shape == (k, n)
    np.testing.assert_array_equal(s, info.singular_values[:k])

    # singular values are non-negative and non-increasing
    assert np.all(s_all >= 0) and np.all(np.diff(s_all) <= 0)

    # U has orthonormal columns, Vh orthonormal rows
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=10 * tol)
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(k), atol=10 * tol)

    # discarded weight = sum of the dropped squared singular values over the total
    total = float((s_all**2).sum())
    expected = float((s_all[k:] ** 2).sum()) / total if total > 0 else 0.0
    assert info.discarded_weight == pytest.approx(expected, rel=1e-12, abs=1e-15)

    # ... which is exactly the relative squared Frobenius error of U s Vh
    M64 = M.astype(np.float64)
    err2 = float(np.linalg.norm(M64 - (U * s).astype(np.float64) @ Vh) ** 2)
    norm2 = float(np.linalg.norm(M64) ** 2)
    assert err2 == pytest.approx(info.discarded_weight * norm2, abs=10 * tol * max(norm2, 1.0))


@SETTINGS
@truncation_cases
def test_truncated_svd_keeps_what_the_cutoff_mode_says(M, max_bond, cutoff, cutoff_mode):
    *_, info = truncated_svd(M, max_bond=max_bond, cutoff=cutoff, cutoff_mode=cutoff_mode)
    s = info.singular_values.astype(np.float64)
    s2 = s.astype(info.singular_values.dtype) ** 2  # _n_keep works in the SVD's own dtype
    total = float(s2.sum())
    if total == 0:
        wanted = 1
    elif cutoff == 0:
        wanted = len(s)
    elif cutoff_mode == "rel":
        wanted = int(np.sum(info.singular_values > cutoff * info.singular_values[0]))
    elif cutoff_mode == "abs":
        wanted = int(np.sum(info.singular_values > cutoff))
    else:  # rsum2: the fewest values whose dropped tail weighs at most cutoff * total
        tails = np.cumsum(s2[::-1])[::-1]
        wanted = next((j for j in range(len(s)) if tails[j] <= cutoff * total), len(s))
    if max_bond is not None:
        wanted = min(wanted, max_bond)
    assert info.kept == max(wanted, 1)


@SETTINGS
@given(M=matrices(), max_bond=st.one_of(st.none(), st.integers(1, 9)), cutoff=cutoffs,
       cutoff_mode=st.sampled_from(CUTOFF_MODES))
def test_metric_split_with_identity_grams_is_the_truncated_svd(M, max_bond, cutoff, cutoff_mode):
    m, n = M.shape
    Il, Ir = np.eye(m, dtype=M.dtype), np.eye(n, dtype=M.dtype)
    Q, C, info = metric_truncated_split(M, Il, Il, Ir, max_bond, cutoff, cutoff_mode)
    U, s, Vh, ref = truncated_svd(M, max_bond, cutoff, cutoff_mode)
    tol = _tol(M.dtype)
    assert info.kept == ref.kept and Q.shape == (m, ref.kept) and C.shape == (ref.kept, n)
    # the metric split takes its basis from the (float64) row Gram matrix, the reference SVD
    # works in M's own dtype: equal to float32 rounding for float32 input
    rel = 1e-12 if M.dtype == np.float64 else tol
    assert info.discarded_weight == pytest.approx(ref.discarded_weight, rel=rel, abs=1e-15 if rel < 1e-6 else tol)
    np.testing.assert_allclose(Q.T @ Q, np.eye(ref.kept), atol=10 * tol)
    scale = max(float(np.abs(M).max()), 1.0)
    np.testing.assert_allclose(Q @ C, (U * s) @ Vh, atol=10 * tol * scale)


@SETTINGS
@given(m=st.integers(1, 6), n=st.integers(1, 6), max_bond=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_metric_split_error_in_the_data_metric_is_the_discarded_weight(m, n, max_bond, seed):
    """With well-conditioned Grams Gl, Gr: |Gl^1/2 (M - QC) Gr^1/2|^2 / |Gl^1/2 M Gr^1/2|^2 == discarded weight."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((m, n))
    A, B = rng.standard_normal((m, m)), rng.standard_normal((n, n))
    Gl_sqrt, Gl_inv_sqrt = psd_sqrt(A @ A.T + np.eye(m))
    Gr_sqrt, _ = psd_sqrt(B @ B.T + np.eye(n))
    Q, C, info = metric_truncated_split(M, Gl_sqrt, Gl_inv_sqrt, Gr_sqrt, max_bond=max_bond)
    assert info.kept == min(max_bond, m, n)
    np.testing.assert_allclose(Q.T @ Q, np.eye(info.kept), atol=1e-10)
    err2 = np.linalg.norm(Gl_sqrt @ (M - Q @ C) @ Gr_sqrt) ** 2
    norm2 = np.linalg.norm(Gl_sqrt @ M @ Gr_sqrt) ** 2
    assert err2 / norm2 == pytest.approx(info.discarded_weight, abs=1e-9)


@SETTINGS
@given(m=st.integers(2, 7), n=st.integers(1, 7), rank=st.integers(1, 6), max_bond=st.integers(1, 7),
       seed=st.integers(0, 2**32 - 1))
def test_metric_split_is_optimal_for_rank_deficient_left_grams(m, n, rank, max_bond, seed):
    """A left Gram of rank < m (pixels that never vary): the split is still optimal in the floored metric.

    Its coefficients ``C`` equal the least-squares optimum given ``Q``, and the
    error in the metric is the reported discarded weight; wide and tall ``M``.
    """
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((m, n))
    A = rng.standard_normal((m, min(rank, m - 1)))
    Gl_sqrt, Gl_inv_sqrt = psd_sqrt(A @ A.T)  # singular: eigenvalues floored at 1e-8 of the largest
    B = rng.standard_normal((n, n))
    Gr_sqrt, _ = psd_sqrt(B @ B.T + np.eye(n))
    Q, C, info = metric_truncated_split(M, Gl_sqrt, Gl_inv_sqrt, Gr_sqrt, max_bond=max_bond)
    np.testing.assert_allclose(Q.T @ Q, np.eye(info.kept), atol=1e-8)
    W = Gl_sqrt @ Q  # the best C given Q: least squares of Gl^1/2 M by Gl^1/2 Q (the right metric drops out)
    C_opt = np.linalg.lstsq(W, Gl_sqrt @ M, rcond=None)[0]
    scale = np.linalg.norm(Gl_sqrt @ M) + 1e-300
    np.testing.assert_allclose(W @ C, W @ C_opt, atol=1e-9 * scale)
    err2 = np.linalg.norm(Gl_sqrt @ (M - Q @ C) @ Gr_sqrt) ** 2
    norm2 = np.linalg.norm(Gl_sqrt @ M @ Gr_sqrt) ** 2
    assert err2 / norm2 == pytest.approx(info.discarded_weight, abs=1e-8)
