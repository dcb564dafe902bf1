import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tnlearn.truncation import check_truncation_args, truncated_svd


def _matrix_with_spectrum(rng, s, m=12, n=15):
    U, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    V, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (U * s) @ V.T


@pytest.mark.parametrize("max_bond", [1, 3, 7])
def test_max_bond_and_discarded_weight(rng, max_bond):
    s = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05])
    M = _matrix_with_spectrum(rng, s)
    U, kept, Vh, info = truncated_svd(M, max_bond=max_bond)
    assert info.kept == len(kept) == max_bond == U.shape[1] == Vh.shape[0]
    expected = (s[max_bond:] ** 2).sum() / (s**2).sum()
    assert info.discarded_weight == pytest.approx(expected, rel=1e-10)
    # the discarded weight is exactly the squared Frobenius error of the truncation
    err = np.linalg.norm(M - (U * kept) @ Vh) ** 2 / np.linalg.norm(M) ** 2
    assert err == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize(
    "mode,cutoff,k",
    [("rel", 0.3, 3), ("abs", 0.9, 4), ("rsum2", 0.0101, 4), ("rsum2", 0.002, 5), ("rsum2", 1e-9, 8)],
)
def test_cutoff_modes(rng, mode, cutoff, k):
    s = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05])
    _, kept, _, info = truncated_svd(_matrix_with_spectrum(rng, s), cutoff=cutoff, cutoff_mode=mode)
    assert info.kept == k
    np.testing.assert_allclose(kept, s[:k], rtol=1e-10)


def test_zero_cutoff_keeps_everything(rng):
    _, _, _, info = truncated_svd(rng.standard_normal((5, 7)), cutoff=0.0)
    assert info.kept == 5 and info.discarded_weight == 0.0


def test_non_finite_block_is_a_clear_error():
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        truncated_svd(np.array([[1.0, np.nan]]))


@pytest.mark.parametrize(
    "args,match",
    [((0, 0.0, "rsum2"), "max_bond"), ((4, -1.0, "rsum2"), "cutoff"), ((4, 0.0, "nope"), "cutoff_mode")],
)
def test_bad_truncation_args(args, match):
    with pytest.raises(ValueError, match=match):
        check_truncation_args(*args)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 9),
    max_bond=st.integers(1, 10),
    cutoff=st.floats(0, 0.5),
    seed=st.integers(0, 10**6),
)
def test_truncation_invariants(m, n, max_bond, cutoff, seed):
    M = np.random.default_rng(seed).standard_normal((m, n))
    U, s, Vh, info = truncated_svd(M, max_bond=max_bond, cutoff=cutoff, cutoff_mode="rsum2")
    assert 1 <= info.kept <= min(max_bond, m, n)
    assert info.discarded_weight <= cutoff + 1e-12 or info.kept == max_bond
    np.testing.assert_allclose(U.T @ U, np.eye(info.kept), atol=1e-10)
    err = np.linalg.norm(M - (U * s) @ Vh) ** 2 / np.linalg.norm(M) ** 2
    assert err == pytest.approx(info.discarded_weight, abs=1e-10)


@pytest.mark.parametrize("shape", [(6, 40), (40, 400), (9, 4)])
def test_row_basis_from_the_row_gram_equals_the_svd(rng, shape):
    """White's density-matrix route gives the SVD's kept left vectors, values and discarded weight."""
    from tnlearn.truncation import truncated_row_basis

    M = rng.standard_normal(shape) * np.logspace(0, -3, shape[0])[:, None]
    for max_bond, cutoff in ((3, 0.0), (None, 1e-3), (None, 0.0)):
        U, s, info = truncated_row_basis(M, max_bond, cutoff, "rsum2")
        U_ref, s_ref, _, ref = truncated_svd(M, max_bond, cutoff, "rsum2")
        assert info.kept == ref.kept == len(s)
        np.testing.assert_allclose(s, s_ref, rtol=1e-8)
        np.testing.assert_allclose(info.singular_values, ref.singular_values, rtol=1e-6, atol=1e-12)
        assert info.discarded_weight == pytest.approx(ref.discarded_weight, rel=1e-8, abs=1e-14)
        np.testing.assert_allclose(np.abs(U.T @ U_ref), np.eye(len(s)), atol=1e-8)  # same vectors up to sign
    M[0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        truncated_row_basis(M)


@pytest.mark.parametrize("scale", [1e-170, 1.0, 1e150])
def test_cutoff_is_scale_free(scale):
    """Squared singular values of tiny (or huge) matrices under/overflow: the cut must not depend on the scale."""
    from tnlearn.truncation import truncated_row_basis

    U, s, Vh, info = truncated_svd(np.eye(5) * scale, cutoff=1e-10)
    assert len(s) == 5 and info.discarded_weight == 0.0
    U, s, Vh, info = truncated_svd(np.diag([3.0, 2.0, 1.0]) * scale, max_bond=2, cutoff=1e-10)
    assert len(s) == 2 and info.discarded_weight == pytest.approx(1 / 14)
    U, s, info = truncated_row_basis(np.diag([3.0, 2.0, 1.0]) * scale, max_bond=2)
    np.testing.assert_allclose(s, np.array([3.0, 2.0]) * scale, rtol=1e-12)
    assert info.discarded_weight == pytest.approx(1 / 14)
