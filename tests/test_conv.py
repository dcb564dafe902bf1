"""The tensor-network conv stage and the conv-mps classifier."""

import numpy as np
import pytest
import quimb.tensor as qtn

from tnlearn.backend import get_backend
from tnlearn.embeddings import embed
from tnlearn.models.conv_mps import ConvMPSClassifier
from tnlearn.stages.conv import extract_patches, patch_grid, patch_sites, pca_conv_cores


@pytest.mark.parametrize("patch,stride", [(2, 2), (2, 1), (3, 2), (4, 4)])
def test_extract_patches_matches_loops(rng, patch, stride):
    images = rng.uniform(size=(3, 8, 9))
    got = extract_patches(images, patch, stride)
    Ho, Wo = patch_grid((8, 9), patch, stride)
    assert got.shape == (3, Ho * Wo, patch * patch)
    for i in range(3):
        for r in range(Ho):
            for c in range(Wo):
                window = images[i, r * stride : r * stride + patch, c * stride : c * stride + patch]
                np.testing.assert_array_equal(got[i, r * Wo + c], window.ravel())


def test_patch_grid_errors():
    with pytest.raises(ValueError, match="does not fit"):
        patch_grid((4, 4), 5, 1)
    with pytest.raises(ValueError, match="stride=0 must be an integer >= 1"):
        patch_grid((4, 4), 2, 0)


def test_pca_channels_capture_the_principal_components(rng):
    from tnlearn.networks import head_to_quimb

    be = get_backend("numpy")
    images = rng.beta(0.5, 0.5, size=(300, 4, 4))
    phi = patch_sites(images, 2, 2, "trig", np.float64, be)  # (4, 4 * 300, 2)
    net = pca_conv_cores(phi, 3, 8, rng, be)
    # the conv MPS as a dense (channels x 16) map, read through quimb
    dense = head_to_quimb(net).contract(all).transpose("label", "k0", "k1", "k2", "k3").data.reshape(3, 16)
    assert np.linalg.matrix_rank(dense, tol=1e-8) == 3
    # full product vectors of the patches: the weight the 3 channels capture, against the
    # optimum (top-3 principal subspace) and against random 3-dim subspaces
    full = np.einsum("na,nb,nc,nd->nabcd", *[phi[k] for k in range(4)]).reshape(-1, 16)
    evals = np.linalg.eigvalsh(full.T @ full)[::-1]
    q, _ = np.linalg.qr(dense.T)
    captured = np.sum((full @ q) ** 2)
    assert captured >= 0.95 * evals[:3].sum()
    random = [np.sum((full @ np.linalg.qr(rng.standard_normal((16, 3)))[0]) ** 2) for _ in range(20)]
    assert captured > max(random)


@pytest.fixture(scope="module")
def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def fitted(digits_split):
    X_tr, X_te, y_tr, y_te = digits_split
    clf = ConvMPSClassifier(n_channels=3, max_bond=8, n_sweeps=2, random_state=0)
    return clf.fit(X_tr, y_tr, eval_set=(X_te, y_te))


def test_conv_sweeps_lower_the_loss_and_learn(fitted, digits_split):
    _, X_te, _, y_te = digits_split
    for record in fitted.history_:
        conv = record.stages["conv"]
        assert conv["loss_after"] < conv["loss_before"]
        assert max(conv["bond_dims"]) <= 6 and conv["max_truncation_error"] >= 0  # exact bond for c=3: 6
    assert fitted.history_[-1].test_accuracy == pytest.approx(fitted.score(X_te, y_te))
    assert fitted.score(X_te, y_te) >= 0.85


def test_conv_features_equal_a_quimb_contraction(fitted, digits_split):
    _, X_te, _, _ = digits_split
    conv_mps = fitted.conv_mps_
    assert "channel" in conv_mps.ind_map and conv_mps.L == 4
    image = X_te[0].reshape(8, 8)
    patch = image[2:4, 4:6].ravel()  # patch (row 1, col 2) of the 4x4 grid: index 6
    phi = embed(patch[None], "trig", dtype=np.float64)[0]
    state = qtn.MPS_product_state([p for p in phi], site_ind_id="k{}")
    u = (conv_mps & state).contract(all).data
    be = fitted.head_.backend
    features = fitted.conv_.features(fitted._patches(X_te[:1], be, "clip"), 1)
    np.testing.assert_allclose(features[6, 0], u / np.linalg.norm(u), atol=1e-5)
    # and the head is a quimb MPS with the label index, as for MPSClassifier
    assert "label" in fitted.mps_.ind_map and fitted.mps_.L == 16


def test_conv_mps_is_reproducible_and_checks_input(fitted, digits_split):
    X_tr, X_te, y_tr, y_te = digits_split
    again = ConvMPSClassifier(n_channels=3, max_bond=8, n_sweeps=2, random_state=0).fit(X_tr, y_tr)
    np.testing.assert_array_equal(again.predict(X_te), fitted.predict(X_te))
    with pytest.raises(ValueError, match="not a square image; pass image_shape"):
        ConvMPSClassifier().fit(X_tr[:, :60], y_tr)
    with pytest.raises(ValueError, match="patch=1"):
        ConvMPSClassifier(patch=1).fit(X_tr, y_tr)
    with pytest.raises(ValueError, match="expects values in \\[0.0, 1.0\\]"):
        ConvMPSClassifier().fit(X_tr * 16, y_tr)
    from sklearn.base import clone

    assert clone(fitted).get_params() == fitted.get_params()


def test_dense_to_conv_cores_is_exact(rng):
    from tnlearn.networks import head_to_quimb
    from tnlearn.stages.conv import dense_to_conv_cores
    from tnlearn.stages.mps import MPSHead

    W = rng.standard_normal((2**4, 3))
    cores, log_norm = dense_to_conv_cores(W, 4, 2, np.float64)
    net = MPSHead(cores, 0, log_norm, get_backend("numpy"))
    dense = head_to_quimb(net).contract(all).transpose("k0", "k1", "k2", "k3", "label").data.reshape(16, 3)
    np.testing.assert_allclose(dense, W, atol=1e-12)


def test_pooled_start_reproduces_average_pooling(rng, digits_split):
    from tnlearn.embeddings import trig_map
    from tnlearn.stages.conv import pooled_conv_cores

    be = get_backend("numpy")
    images = digits_split[0][:400].reshape(-1, 8, 8)
    phi = patch_sites(images, 2, 2, "trig", np.float64, be)
    pixels = extract_patches(images, 2, 2).transpose(1, 0, 2).reshape(-1, 4)
    net = pooled_conv_cores(phi, pixels, 3, "trig", be)
    u = net.decision_function(phi)
    target = trig_map(pixels.mean(axis=1)[:, None])[:, 0, :]
    # channels 0, 1: the least-squares multilinear fit of phi(mean pixel); a shuffled fit is far worse
    err = np.linalg.norm(u[:, :2] - target) / np.linalg.norm(target)
    assert err < 0.2
    assert np.linalg.norm(u[:, :2] - target[rng.permutation(len(target))]) / np.linalg.norm(target) > 2 * err
    assert u.shape[1] == 3 and np.linalg.norm(u[:, 2]) > 0


@pytest.mark.parametrize("n_channels", [2, 4])
def test_default_conv_bond_never_truncates(n_channels, digits_split):
    from tnlearn.models.conv_mps import exact_conv_bond

    assert exact_conv_bond(4, 2, 2) == 4 and exact_conv_bond(4, 2, 4) == 8
    X_tr, _, y_tr, _ = digits_split
    clf = ConvMPSClassifier(n_channels=n_channels, max_bond=8, n_sweeps=1, random_state=0).fit(X_tr[:300], y_tr[:300])
    assert clf.history_[0].stages["conv"]["max_truncation_error"] < 1e-10


@pytest.mark.parametrize("conv_bond", [1, 2])
def test_capped_conv_bond_is_honoured_and_the_recorded_loss_is_the_true_one(conv_bond, digits_split):
    """A capped conv bond: each conv step is judged after the split's truncation."""
    from tnlearn.stages.conv_sweeps import head_loss

    X_tr, _, y_tr, _ = digits_split
    X, y = X_tr[:300], y_tr[:300]
    clf = ConvMPSClassifier(n_channels=3, conv_bond=conv_bond, max_bond=4, n_sweeps=2, random_state=0).fit(X, y)
    for record in clf.history_:
        assert max(record.stages["conv"]["bond_dims"]) <= conv_bond
    be = clf.head_.backend
    onehot = np.eye(len(clf.classes_), dtype=np.float32)[np.searchsorted(clf.classes_, y)]
    features = clf.conv_.features(clf._patches(X, be, "raise"), len(X))
    true_loss = head_loss(clf.head_, features, onehot, "cosine")
    assert clf.history_[-1].stages["conv"]["loss_after"] == pytest.approx(true_loss, rel=1e-4)


def test_too_many_channels_is_an_error(digits_split):
    X_tr, _, y_tr, _ = digits_split
    with pytest.raises(ValueError, match="n_channels=20 exceeds the 16 dimensions"):
        ConvMPSClassifier(n_channels=20).fit(X_tr[:50], y_tr[:50])
