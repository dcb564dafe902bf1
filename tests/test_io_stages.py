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
