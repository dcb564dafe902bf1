import json
import pickle
import zipfile

import numpy as np
import pytest

from tnlearn import MPSClassifier
from tnlearn.io import FORMAT_VERSION, ModelFormatError, load_model, read_header, save_model


@pytest.fixture
def fitted(tiny_problem):
    X, y = tiny_problem
    return MPSClassifier(max_bond=4, n_sweeps=2, random_state=0).fit(X, y), X


def test_round_trip_is_bit_identical(fitted, tmp_path):
    clf, X = fitted
    path = tmp_path / "model.npz"
    save_model(clf, path)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.decision_function(X), clf.decision_function(X))
    assert loaded.get_params() == clf.get_params()
    assert loaded.history_.to_json() == clf.history_.to_json()
    header = read_header(path)
    assert header["format_version"] == FORMAT_VERSION and header["index_names"]["label"] == "label"
    assert not list(tmp_path.glob(".tmp-*"))  # the atomic write leaves no temporary file


def _rewrite(src, dst, mutate):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    mutate(arrays)
    np.savez(dst, **arrays)


def test_other_format_version_is_rejected(fitted, tmp_path):
    clf, _ = fitted
    save_model(clf, tmp_path / "m.npz")

    def bump(arrays):
        header = json.loads(bytes(arrays["header"]))
        header["format_version"] = 99
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)

    _rewrite(tmp_path / "m.npz", tmp_path / "v99.npz", bump)
    with pytest.raises(ModelFormatError, match="version 99.*reads version 1"):
        load_model(tmp_path / "v99.npz")


def test_tampered_cores_are_rejected(fitted, tmp_path):
    clf, _ = fitted
    save_model(clf, tmp_path / "m.npz")
    _rewrite(tmp_path / "m.npz", tmp_path / "bad.npz", lambda a: a.pop("core_3"))
    with pytest.raises(ModelFormatError, match="incomplete"):
        load_model(tmp_path / "bad.npz")


class _Boom:
    def __reduce__(self):
        return (pytest.fail, ("the loader executed code from a pickle",))


def test_pickled_payloads_are_never_unpickled(tmp_path):
    # an .npz whose header is a pickled object array
    path = tmp_path / "evil.npz"
    np.savez(path, header=np.array([_Boom()], dtype=object))
    with pytest.raises(ModelFormatError):
        load_model(path)
    # a bare pickle file
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ModelFormatError, match="not a tnlearn model"):
        load_model(raw)


def test_foreign_and_truncated_files(fitted, tmp_path):
    clf, _ = fitted
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    with pytest.raises(ModelFormatError, match="no 'header'"):
        load_model(tmp_path / "foreign.npz")
    save_model(clf, tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises((ModelFormatError, zipfile.BadZipFile)):
        load_model(tmp_path / "cut.npz")


@pytest.mark.parametrize(
    "arrays",
    [
        {"a": np.arange(3)},
        {"a": np.array([{}], dtype=object)},  # an object array: numpy would pickle it
        {"header": np.array([{}], dtype=object)},
    ],
    ids=["plain-array", "object-array", "object-header"],
)
def test_foreign_npz_is_named_with_the_fix(tmp_path, arrays):
    """A random .npz: 'not a tnlearn model file' and how to get one, never numpy's allow_pickle advice."""
    path = tmp_path / "foreign.npz"
    np.savez(path, **arrays)
    for load in (load_model, read_header):
        with pytest.raises(ModelFormatError) as info:
            load(path)
        msg = str(info.value)
        assert f"{path} is not a tnlearn model file" in msg
        assert "tnlearn.io.save_model" in msg and "re-train" in msg
        assert "allow_pickle" not in msg


@pytest.mark.parametrize("kind", ["pickle", "text", "object-npy"])
def test_non_archive_files_are_named_with_the_fix(tmp_path, kind):
    path = tmp_path / "model.npz"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2]}))
    elif kind == "text":
        path.write_text("not a model\n")
    else:
        with open(path, "wb") as fh:
            np.save(fh, np.array([{}], dtype=object))
    with pytest.raises(ModelFormatError) as info:
        load_model(path)
    msg = str(info.value)
    assert f"{path} is not a tnlearn model file" in msg
    assert ("single .npy array" if kind == "object-npy" else "neither an .npz archive nor an .npy array") in msg
    assert "tnlearn.io.save_model" in msg and "re-train" in msg
    assert "allow_pickle" not in msg


def test_callable_feature_maps_cannot_be_saved(tiny_problem, tmp_path):
    X, y = tiny_problem
    fmap = lambda X: np.stack([np.ones_like(X), X], -1)  # noqa: E731
    clf = MPSClassifier(max_bond=2, n_sweeps=1, feature_map=fmap, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="named feature map"):
        save_model(clf, tmp_path / "m.npz")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_model_file_permissions_follow_the_umask(fitted, tmp_path, umask):
    """The atomic write goes through mkstemp (always 0600): the saved file must get the usual mode."""
    import os
    import stat

    old = os.umask(umask)
    try:
        save_model(fitted[0], tmp_path / "model.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model.npz").stat().st_mode) == 0o666 & ~umask


def test_a_file_with_an_unknown_loss_function_is_refused(tmp_path):
    """The loss a model was trained with (what predict_proba depends on) is checked on load like the rest."""
    from tnlearn import MPSClassifier

    rng = np.random.default_rng(0)
    X, y = rng.random((120, 5)), np.arange(120) % 3
    clf = MPSClassifier(max_bond=3, n_sweeps=1, random_state=0).fit(X, y)
    assert clf.loss_function_ == "cross_entropy"
    save_model(clf, tmp_path / "m.npz")
    assert read_header(tmp_path / "m.npz")["loss_function"] == "cross_entropy"

    def other_loss(arrays):
        header = json.loads(bytes(arrays["header"]))
        header["loss_function"] = "hinge"
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)

    _rewrite(tmp_path / "m.npz", tmp_path / "bad.npz", other_loss)
    with pytest.raises(ModelFormatError, match="loss_function 'hinge'"):
        load_model(tmp_path / "bad.npz")
