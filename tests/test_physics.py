"""Physics interop: spectra and entropies against quimb; models built from quimb MPSs."""

import numpy as np
import pytest
import quimb.tensor as qtn

from tnlearn import MPSClassifier
from tnlearn.physics import entanglement_by_class, entanglement_entropies, schmidt_spectra


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(5)
    X = rng.random((150, 9))
    y = (X[:, :3].sum(axis=1) * 1.7).astype(int) % 3
    return MPSClassifier(max_bond=5, n_sweeps=2, dtype="float64", random_state=0).fit(X, y), X


def test_entropies_equal_quimbs_with_the_label_in_the_left_block(fitted):
    clf, _ = fitted
    psi = clf.mps_
    psi = psi / psi.norm()
    expected = [float(psi.entropy(b)) for b in range(1, psi.L)]
    np.testing.assert_allclose(entanglement_entropies(clf), expected, atol=1e-8)
    spectra = schmidt_spectra(clf)
    assert len(spectra) == psi.L - 1
    for b, p in enumerate(spectra, start=1):
        assert p.sum() == pytest.approx(1.0) and np.all(np.diff(p) <= 1e-12)
        assert len(p) <= clf.head_.bond_dims[b - 1]
    np.testing.assert_allclose(entanglement_entropies(clf, base=np.e), np.log(2) * np.array(expected), atol=1e-8)


def test_per_class_entropies_equal_quimbs_on_the_single_class_state(fitted):
    clf, _ = fitted
    profiles = entanglement_by_class(clf)
    assert profiles.shape == (3, clf.n_features_in_ - 1)
    for label in range(3):
        psi = clf.mps_.isel({"label": label})
        psi /= psi.norm()
        dense = psi.to_dense().reshape(-1)
        n = clf.n_features_in_
        for b in (1, n // 2, n - 1):
            s = np.linalg.svd(dense.reshape(2**b, -1), compute_uv=False)
            p = s[s > 1e-12] ** 2
            assert profiles[label, b - 1] == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-8)


def test_bad_label_choice(fitted):
    with pytest.raises(ValueError, match=r"label=7 must be 'left' or a class index in 0\.\.2"):
        entanglement_entropies(fitted[0], label=7)


@pytest.mark.parametrize("center", [0, 4, 8])
def test_model_from_a_quimb_mps_predicts_what_quimb_computes(fitted, center):
    """A random quimb MPS with the label anywhere becomes a classifier with the same outputs."""
    clf, X = fitted
    rng = np.random.default_rng(center)
    n, L = X.shape[1], 3
    arrays = []
    for i in range(n):
        Dl, Dr = (1 if i == 0 else 3), (1 if i == n - 1 else 3)
        shape = (Dl, Dr, 2) if i != center else (Dl, Dr, 2, L)
        a = rng.standard_normal(shape)
        a = a[0] if i == 0 else a
        a = a[:, 0] if i == n - 1 else a
        arrays.append(a)
    tensors = []
    for i, a in enumerate(arrays):
        inds = ([f"b{i - 1}"] if i > 0 else []) + ([f"b{i}"] if i < n - 1 else []) + [f"k{i}"]
        inds += ["label"] if i == center else []
        tensors.append(qtn.Tensor(a, inds=inds, tags={f"I{i}"}))
    mps = qtn.TensorNetwork(tensors).view_as_(qtn.MatrixProductState, L=n, site_tag_id="I{}", site_ind_id="k{}",
                                              cyclic=False)
    model = MPSClassifier.from_quimb(mps, classes=["a", "b", "c"], dtype="float64")
    from tnlearn import embed, product_state

    phi = embed(X[:5], dtype=np.float64)
    expected = np.array([(mps & product_state(row)).contract(output_inds=["label"]).data for row in phi])
    np.testing.assert_allclose(model.outputs(X[:5]), expected, rtol=1e-9)
    assert model.head_.center == 0 and list(model.classes_) == ["a", "b", "c"]
    # and it trains on from there
    y = np.array(["a", "b", "c"])[(X[:, :3].sum(axis=1) * 1.7).astype(int) % 3]
    model.set_params(warm_start=True, n_sweeps=1, max_bond=4).fit(X, y)
    assert len(model.history_) == 1 and max(model.head_.bond_dims) <= 4


def test_from_quimb_rejects_a_feature_map_of_the_wrong_dimension(fitted):
    with pytest.raises(ValueError, match="physical dimension 2 but feature_map='poly2'"):
        MPSClassifier.from_quimb(fitted[0].mps_, feature_map="poly2")


def _label_mps(n=6, center=3, bond=3, L=3, seed=0, dtype=float):
    rng = np.random.default_rng(seed)
    tensors = []
    for i in range(n):
        shape = ([bond] if i > 0 else []) + ([bond] if i < n - 1 else []) + [2] + ([L] if i == center else [])
        inds = ([f"b{i - 1}"] if i > 0 else []) + ([f"b{i}"] if i < n - 1 else []) + [f"k{i}"]
        inds += ["label"] if i == center else []
        tensors.append(qtn.Tensor(rng.standard_normal(shape).astype(dtype), inds=inds, tags={f"I{i}"}))
    return qtn.TensorNetwork(tensors).view_as_(qtn.MatrixProductState, L=n, site_tag_id="I{}", site_ind_id="k{}",
                                               cyclic=False)


def test_from_quimb_refuses_complex_entries_and_takes_real_complex_dtype():
    mps = _label_mps()
    X = np.random.default_rng(1).random((4, 6))
    real = MPSClassifier.from_quimb(mps, dtype="float64").outputs(X)
    as_complex = MPSClassifier.from_quimb(mps.astype("complex128"), dtype="float64").outputs(X)
    np.testing.assert_allclose(as_complex, real, rtol=1e-12)  # complex dtype, zero imaginary parts: fine
    bumped = mps.copy()
    bumped[bumped.site_tag(2)].modify(data=bumped[bumped.site_tag(2)].data * (1 + 0.5j))
    with pytest.raises(ValueError, match="site 2 has complex entries"):
        MPSClassifier.from_quimb(bumped)


def test_from_quimb_refuses_a_periodic_mps():
    mps = qtn.MPS_rand_state(6, bond_dim=3, cyclic=True, dtype="float64")
    with pytest.raises(ValueError, match="periodic"):
        MPSClassifier.from_quimb(mps)


def test_from_quimb_drops_exact_zero_singular_values_when_moving_the_label():
    """Bonds of dimension 8 whose rank is 2: the label's moves must not keep the zero directions.

    Carrying the 3-valued label across a bond of rank 2 needs rank 2 * 3 = 6, not 8 * 3."""
    mps = _label_mps(n=6, center=4, bond=2)
    padded = mps.copy()
    padded.expand_bond_dimension(8, inplace=True)  # zero padding: same network, bonds of 8
    assert max(padded.bond_sizes()) == 8
    model = MPSClassifier.from_quimb(padded, max_bond=6, dtype="float64")
    assert model.head_.center == 0 and max(model.head_.bond_dims[:4]) <= 6
    X = np.random.default_rng(2).random((4, 6))
    np.testing.assert_allclose(model.outputs(X), MPSClassifier.from_quimb(mps, dtype="float64").outputs(X),
                               rtol=1e-9)


def test_from_quimb_names_a_bond_wider_than_max_bond():
    with pytest.raises(ValueError, match=r"bond of dimension \d+ > max_bond=2: pass max_bond >= "):
        MPSClassifier.from_quimb(_label_mps(bond=5), max_bond=2)
