"""Saving and loading the multi-stage models (conv-mps, TT-net): bit-identical, never unpickled."""

import numpy as np
import pytest

from tnlearn.io import ModelFormatError, load_model, save_model
from tnlearn.models.conv_mps import ConvMPSClassifier
from tnlearn.models.tt_net import TTNetClassifier


@pytest.fixture(scope="module")
def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module", params=["conv-mps", "tt-net"])
def fitted(request, digits_split):
    X_tr, _, y_tr, _ = digits_split
    if request.param == "conv-mps":
        return ConvMPSClassifier(n_channels=3, max_bond=6, n_sweeps=1, random_state=0).fit(X_tr, y_tr)
    return TTNetClassifier(n_cores=3, max_rank=2, n_sweeps=1, random_state=0).fit(X_tr, y_tr)


def test_round_trip_is_bit_identical(fitted, digits_split, tmp_path):
    _, X_te, _, _ = digits_split
    path = tmp_path / "model.npz"
    save_model(fitted, path)
    loaded = load_model(path)
    assert type(loaded) is type(fitted)
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.decision_function(X_te), fitted.decision_function(X_te))
    assert loaded.history_.to_json() == fitted.history_.to_json()
    with np.load(path, allow_pickle=False) as archive:  # everything is plain arrays
        assert all(archive[name].dtype != object for name in archive.files)


def test_tampered_stage_arrays_are_rejected(fitted, tmp_path):
    path = tmp_path / "model.npz"
    save_model(fitted, path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    key = "conv_core_1" if "conv_core_1" in arrays else "tt_core_1"
    arrays[key] = arrays[key][:, :1]  # wrong shape: cores no longer connect / match the map
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ModelFormatError, match="inconsistent"):
        load_model(bad)
    arrays = {name: a for name, a in arrays.items() if name not in ("V", "conv_core_0")}
    np.savez(bad, **arrays)
    with pytest.raises(ModelFormatError):
        load_model(bad)


def test_conv_header_geometry_and_dtypes_are_cross_checked(digits_split, tmp_path):
    import json

    X_tr, _, y_tr, _ = digits_split
    clf = ConvMPSClassifier(n_channels=3, max_bond=6, n_sweeps=1, random_state=0).fit(X_tr[:200], y_tr[:200])
    path = tmp_path / "model.npz"
    save_model(clf, path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(bytes(arrays["header"]).decode())
    bad = tmp_path / "bad.npz"
    header["image_shape"] = [2, 32]  # the 1x16 grid would still fit the 16-site head
    np.savez(bad, **{**arrays, "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)})
    with pytest.raises(ModelFormatError, match="image_shape \\(2, 32\\) disagrees"):
        load_model(bad)
    np.savez(bad, **{**arrays, "conv_core_0": arrays["conv_core_0"].astype(np.float64)})
    with pytest.raises(ModelFormatError, match="conv_core_0 is float64 but the model's dtype is float32"):
        load_model(bad)


def test_numpy_hyperparameters_and_generators_save(digits_split, tmp_path):
    X_tr, X_te, y_tr, _ = digits_split
    clf = TTNetClassifier(in_shape=(np.int64(8), np.int64(8)), hidden_shape=(8, 8), max_rank=np.int64(2),
                          n_sweeps=1, random_state=np.random.default_rng(0)).fit(X_tr[:200], y_tr[:200])
    save_model(clf, tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.random_state is None and loaded.in_shape == (8, 8) and loaded.max_rank == 2
    np.testing.assert_array_equal(loaded.decision_function(X_te), clf.decision_function(X_te))


def test_fitted_models_pickle_for_joblib_and_multiprocessing(fitted, digits_split):
    """Your own objects in your own process (joblib, loky, deepcopy); files from others: load_model."""
    import copy
    import pickle

    from tnlearn import MPSClassifier

    _, X_te, _, _ = digits_split
    X_tr, _, y_tr, _ = digits_split
    mps = MPSClassifier(max_bond=4, n_sweeps=1, random_state=0).fit(X_tr[:200], y_tr[:200])
    for model in (fitted, mps):
        again = pickle.loads(pickle.dumps(model))
        np.testing.assert_array_equal(again.decision_function(X_te), model.decision_function(X_te))
        np.testing.assert_array_equal(copy.deepcopy(model).predict(X_te), model.predict(X_te))
