import numpy as np
import pytest

from tnlearn.embeddings import FeatureMap, embed, get_feature_map, poly_map, trig_map


def test_trig_map_values_and_unit_norm(rng):
    X = rng.random((5, 7))
    Phi = trig_map(X)
    assert Phi.shape == (5, 7, 2)
    np.testing.assert_allclose(Phi[..., 0], np.cos(np.pi * X / 2))
    np.testing.assert_allclose(Phi[..., 1], np.sin(np.pi * X / 2))
    np.testing.assert_allclose(np.linalg.norm(Phi, axis=-1), 1.0)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_poly_map(rng, degree):
    X = rng.random((4, 3))
    Phi = poly_map(X, degree)
    assert Phi.shape == (4, 3, degree + 1)
    for k in range(degree + 1):
        np.testing.assert_allclose(Phi[..., k], X**k)


@pytest.mark.parametrize("name,d", [("trig", 2), ("linear", 2), ("poly2", 3), ("poly3", 4)])
def test_named_maps(name, d):
    assert get_feature_map(name).dim == d
    assert embed(np.zeros((2, 3)), name).shape == (2, 3, d)


def test_callable_map_dimension_is_probed():
    fmap = get_feature_map(lambda X: np.stack([X, X**2, 1 - X], axis=-1))
    assert fmap.dim == 3 and fmap.domain is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embed_dtype(dtype):
    assert embed(np.full((2, 2), 0.5), "trig", dtype).dtype == dtype


def test_out_of_domain_pixels_are_an_error_that_names_the_fix():
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\].*pixels / 255"):
        embed(np.array([[0.0, 255.0]]), "trig")


def test_nan_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        embed(np.array([[0.0, np.nan]]), "trig")


def test_unknown_map_lists_choices():
    with pytest.raises(ValueError, match="'bogus'.*trig"):
        get_feature_map("bogus")


def test_bad_callable_shape_rejected():
    with pytest.raises(ValueError, match=r"\(n, N, d\)"):
        get_feature_map(lambda X: X)


def test_feature_map_object_passthrough():
    fmap = FeatureMap("half", lambda X: np.stack([X / 2, 1 - X / 2], -1), 2, (0.0, 2.0))
    assert embed(np.array([[1.5, 2.0]]), fmap).shape == (1, 2, 2)
