"""Bad input: every mistake a user can make gets the right exception and a message
that names the problem and the fix (issue 5, "Trustworthy training: bad input").

Cases already covered elsewhere are listed, with their tests, in docs/bad_inputs.md;
this file holds the rest.
"""

import json
import os
import pickle
import re

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from tnlearn import MPSClassifier
from tnlearn.datasets import MNIST_FILES, load_dataset, load_fashion_mnist, load_mnist, write_idx
from tnlearn.embeddings import DataDomainWarning
from tnlearn.io import ModelFormatError, load_model, read_header, save_model


def _clf(**kwargs):
    return MPSClassifier(**{"max_bond": 2, "n_sweeps": 1, "random_state": 0, **kwargs})


@pytest.fixture(scope="module")
def data():
    """30 samples, 6 features in [0, 1], 3 balanced classes."""
    X = np.random.default_rng(0).random((30, 6))
    return X, np.arange(30) % 3


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return _clf().fit(X, y)


@pytest.fixture(scope="module")
def model_file(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    save_model(fitted, path)
    return path


# ------------------------------------------------------------------- X: shape and rank
def test_3d_images_at_predict_time_say_flatten(fitted, data):
    X, _ = data
    with pytest.raises(ValueError, match=r"2-D .*got shape \(30, 2, 3\).*X\.reshape\(len\(X\), -1\)"):
        fitted.predict(X.reshape(30, 2, 3))


@pytest.mark.parametrize("where", ["fit", "predict"])
def test_1d_X_is_rejected(fitted, data, where):
    X, y = data
    with pytest.raises(ValueError, match=r"X must be 2-D with shape \(n_samples, n_features\), got shape \(\d+,\)"):
        _clf().fit(X[:, 0], y) if where == "fit" else fitted.predict(X[0])


def test_1d_X_message_says_how_to_reshape(fitted, data):
    X, _ = data
    with pytest.raises(ValueError, match=r"reshape\(1, -1\)"):
        fitted.predict(X[0])


def test_other_image_size_at_predict_time(data):
    """Fitted on 4x4 images (16 pixels), asked about 8x8 ones: names both sizes and the fix."""
    rng = np.random.default_rng(1)
    clf = _clf().fit(rng.random((30, 16)), data[1])
    pattern = r"X has 64 features, but MPSClassifier is expecting 16 features as input; use the same image size"
    with pytest.raises(ValueError, match=pattern):
        clf.predict(rng.random((5, 64)))


def test_empty_X_at_predict_time(fitted):
    with pytest.raises(ValueError, match=r"0 sample\(s\) \(shape=\(0, 6\)\).*; pass at least one sample"):
        fitted.predict(np.zeros((0, 6)))


# --------------------------------------------------------------------- X: values
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["fit", "predict"])
def test_non_finite_X(fitted, data, value, where):
    X, y = data
    X = X.copy()
    X[2, 3] = value
    X[5, 4] = value
    pattern = r"X contains 2 NaN or infinite value\(s\), in column\(s\) 3, 4; remove or impute them"
    with pytest.raises(ValueError, match=pattern):
        _clf().fit(X, y) if where == "fit" else fitted.predict(X)


def test_complex_X(data):
    X, y = data
    with pytest.raises(ValueError, match=r"Complex data not supported: X has complex dtype complex128; .*pass X\.real"):
        _clf().fit(X + 0j, y)


@pytest.mark.parametrize("scale,shift", [(255.0, 0.0), (1.0, -0.5)], ids=["raw-pixels", "negative"])
def test_out_of_domain_pixels_are_an_error_when_fitting(data, scale, shift):
    X, y = data
    with pytest.raises(ValueError, match=r"expects values in \[0\.0, 1\.0\] but X has values in .*pixels / 255"):
        _clf().fit(X * scale + shift, y)


def test_out_of_domain_pixels_are_clipped_with_a_warning_when_predicting(fitted, data):
    X, _ = data
    with pytest.warns(DataDomainWarning, match=r"pixels / 255.*values were clipped into the domain"):
        pred = fitted.predict(X * 255)
    np.testing.assert_array_equal(pred, fitted.predict(np.clip(X * 255, 0, 1)))


# ------------------------------------------------------------------------- labels
def test_continuous_labels_are_rejected_integral_floats_are_classes(data):
    X, y = data
    with pytest.raises(ValueError, match=r"Unknown label type: continuous.*expects discrete classes"):
        _clf().fit(X, y + 0.5)
    np.testing.assert_array_equal(_clf().fit(X, y.astype(float)).classes_, [0.0, 1.0, 2.0])


def test_column_y_warns_and_fits_as_1d(data):
    """scikit-learn's convention: a column vector y is raveled with a DataConversionWarning."""
    from sklearn.exceptions import DataConversionWarning

    X, y = data
    with pytest.warns(DataConversionWarning, match="ravel"):
        column = _clf().fit(X, y[:, None])
    np.testing.assert_array_equal(column.decision_function(X), _clf().fit(X, y).decision_function(X))


def test_2d_y_is_rejected(data):
    X, y = data
    with pytest.raises(ValueError, match=r"y should be a 1d array, got an array of shape \(30, 2\)"):
        _clf().fit(X, np.stack([y, y], axis=1))


def test_scoring_with_a_class_never_seen_counts_those_samples_as_errors(fitted, data):
    """Decision: score() accepts labels the model never saw; they can never be predicted."""
    X, y = data
    y_new = y.copy()
    y_new[:10] = 7
    assert fitted.score(X, y_new) == pytest.approx(np.mean(fitted.predict(X) == y_new))
    assert np.mean(fitted.predict(X[:10]) == 7) == 0


def test_scoring_with_labels_of_another_type(fitted, data):
    X, y = data
    with pytest.raises(ValueError, match=r"Mix of label input types \(string and number\)"):
        fitted.score(X, np.array(["a", "b", "c"])[y])


def test_warm_start_with_a_new_class(data):
    X, y = data
    clf = _clf(warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match=r"warm_start: y has classes \[3\] unseen in the first fit"):
        clf.fit(X, np.where(y == 2, 3, y))


def test_warm_start_with_a_new_class_message_says_refit(data):
    X, y = data
    clf = _clf(warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match=r"warm_start=False"):
        clf.fit(X, np.where(y == 2, 3, y))


@pytest.mark.parametrize("bad", ["length", "not-a-pair"])
def test_bad_eval_set_is_rejected_before_training(data, bad):
    X, y = data
    eval_set = (X, y[:10]) if bad == "length" else X
    with pytest.raises(ValueError, match=r"eval_set must be a pair \(X_test, y_test\)"):
        _clf().fit(X, y, eval_set=eval_set)


# ----------------------------------------------------------------- hyperparameters
def invalid(name, example, model="MPSClassifier"):
    """scikit-learn's parameter error, with the default as the example of a valid value."""
    return rf"The '{name}' parameter of {model} must be .* Got .* instead\. For example {name}={example} \(the default\)"


@pytest.mark.parametrize("max_bond", [-1, 1.5, "4", True, None])
def test_bad_max_bond(data, max_bond):
    with pytest.raises(ValueError, match=invalid("max_bond", 16) + "|max_bond=True must be an integer >= 1"):
        _clf(max_bond=max_bond).fit(*data)


@pytest.mark.parametrize("cutoff", [np.nan, np.inf, "1e-10", None])
def test_bad_cutoff(data, cutoff):
    with pytest.raises(ValueError, match=invalid("cutoff", "1e-10")):
        _clf(cutoff=cutoff).fit(*data)


@pytest.mark.parametrize(
    "name,value,choices",
    [
        ("solver", "adam", r"\('gd', 'cg'\)"),
        ("loss", "hinge", r"\('mse', 'cross_entropy'\)"),
        ("feature_map", "rbf", r"\['linear', 'poly2', 'poly3', 'trig'\] or pass a callable"),
        ("init", "random", r"\('pca', 'identity'\)"),
        ("truncation", "qr", r"\('data', 'svd'\)"),
        ("dtype", "float16", r"\('float32', 'float64'\)"),
        ("cutoff_mode", "sum", r"\('rsum2', 'rel', 'abs'\)"),
        ("backend", "jax", r"\('numpy', 'cupy'\)"),
    ],
)
def test_unknown_names_list_the_choices(data, name, value, choices):
    """Every choice is named: scikit-learn's parameter error lists them as a set."""
    if name == "feature_map":  # any name passes the type check; the registry names the choices
        match = rf"{name}='{value}' is not known; choose one of {choices}"
    else:
        every_choice = "".join(rf"(?=[^.]*'{choice}')" for choice in re.findall(r"'(\w+)'", choices))
        match = rf"The '{name}' parameter of MPSClassifier must be {every_choice}a str among \{{.*\}}.* Got '{value}' instead"
    with pytest.raises(ValueError, match=match):
        _clf(**{name: value}).fit(*data)


@pytest.mark.parametrize("chunk_size", [0, "big", 2.5, True])
def test_bad_chunk_size_names_the_choices(data, chunk_size):
    with pytest.raises(ValueError, match=invalid("chunk_size", "'auto'") + "|chunk_size=True must be 'auto'"):
        _clf(chunk_size=chunk_size).fit(*data)


def test_auto_chunk_size_is_the_backends_default():
    from tnlearn.backend import get_backend, resolve_chunk_size

    numpy_backend = get_backend("numpy")
    assert MPSClassifier().chunk_size == "auto"
    assert resolve_chunk_size("auto", numpy_backend) == numpy_backend.default_chunk_size == 4096
    assert resolve_chunk_size(np.int64(7), numpy_backend) == 7


def test_feature_map_of_the_wrong_type(data):
    with pytest.raises(TypeError, match=invalid("feature_map", "'trig'")):
        _clf(feature_map=3).fit(*data)


def test_numpy_dtype_objects_are_accepted(data):
    assert _clf(dtype=np.float32).fit(*data).decision_function(data[0][:2]).shape == (2, 3)


# ------------------------------------------------------------------------ unfitted
@pytest.mark.parametrize("call", ["decision_function", "score", "predict_proba", "mps_", "save_model"])
def test_unfitted_model(call, data, tmp_path):
    X, y = data
    clf = _clf(loss="cross_entropy")
    actions = {
        "decision_function": lambda: clf.decision_function(X),
        "score": lambda: clf.score(X, y),
        "predict_proba": lambda: clf.predict_proba(X),
        "mps_": lambda: clf.mps_,
        "save_model": lambda: save_model(clf, tmp_path / "m.npz"),
    }
    with pytest.raises(NotFittedError, match=r"not fitted yet: call fit\(X, y\) first, or load a saved model"):
        actions[call]()
    assert not (tmp_path / "m.npz").exists()


# ------------------------------------------------------------------------ data sets
@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
@pytest.mark.parametrize("missing", MNIST_FILES)
def test_data_dir_missing_one_of_the_four_files(tmp_path, loader, missing):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 10, 4, dtype=np.uint8)] * 2
    for name, arr in zip(MNIST_FILES, arrays):
        if name != missing:
            write_idx(tmp_path / name, arr)
    with pytest.raises(FileNotFoundError, match=rf"missing {missing} in .*data_dir must hold the four files") as info:
        loader(data_dir=tmp_path, download=False)
    assert str(tmp_path) in str(info.value)
    assert all(name in str(info.value) for name in MNIST_FILES)


def test_data_dir_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\(the directory does not exist\); data_dir must hold the four files"):
        load_dataset("mnist", data_dir=tmp_path / "nowhere", download=False)


# ----------------------------------------------------------------------- model files
def _rewrite(src, dst, mutate):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    mutate(arrays)
    np.savez(dst, **arrays)
    return dst


def _header(**changes):
    def mutate(arrays):
        header = json.loads(bytes(arrays["header"]))
        header.update(changes)
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)

    return mutate


def _set(name, value):
    return lambda arrays: arrays.__setitem__(name, value(arrays) if callable(value) else value)


@pytest.mark.parametrize(
    "mutate,problem",
    [
        (_set("header", np.frombuffer(b"[1, 2]", np.uint8)), r"its header is a JSON list, not an object"),
        (_set("header", np.frombuffer(b"\xff\xfe", np.uint8)), r"the header is not valid JSON text"),
        (_header(format="other"), r"not a tnlearn model file \(format 'other'\)"),
        (_header(model_class="Foo"), r"unknown model class 'Foo'"),
        (_header(center=7), r"centre site 7 is outside the chain of 6 sites"),
        (_header(n_sites="6"), r"header field 'n_sites' must be an integer"),
        (_header(log_norm=float("nan")), r"log_norm. must be a finite number, got nan"),
        (_header(params={"max_bond": -1}), r"The 'max_bond' parameter of MPSClassifier must be an int in the range \[1, inf\)\. Got -1"),
        (_header(params={"nonsense": 1}), r"unexpected keyword argument 'nonsense'"),
        (_set("core_2", lambda a: np.where(a["core_2"] > 0, np.nan, a["core_2"])), r"core_2 has NaN or infinite"),
        (_set("core_2", lambda a: a["core_2"].astype(np.int32)), r"core_2 is int32 .* expected real floats"),
        (_set("core_2", np.ones((3, 2, 2), np.float32)), r"core_2 has shape \(3, 2, 2\): its left bond must be 2"),
        (_set("core_5", np.ones((2, 2, 2), np.float32)), r"the last core's right bond is 2, expected 1"),
        (_set("classes", np.array([2, 0, 1])), r"classes must be sorted and unique"),
        (_set("classes", np.array([0, 1])), r"the centre core has 3 label values, expected 2"),
    ],
    ids=[
        "header-list", "header-not-utf8", "foreign-format", "model-class", "centre", "n_sites-string",
        "log_norm-nan", "invalid-param", "unknown-param", "core-nan", "core-int", "core-bond",
        "core-boundary", "classes-unsorted", "classes-count",
    ],
)
def test_tampered_model_file(model_file, tmp_path, mutate, problem):
    path = _rewrite(model_file, tmp_path / "tampered.npz", mutate)
    with pytest.raises(ModelFormatError, match=problem) as info:
        load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage", ["empty", "bit-flip", "npy"])
def test_damaged_model_file(model_file, tmp_path, damage):
    path = tmp_path / "damaged.npz"
    blob = bytearray(model_file.read_bytes())
    if damage == "empty":
        path.write_bytes(b"")
        fix = r"save the model again with tnlearn\.io\.save_model, or re-train"
    elif damage == "bit-flip":  # inside core_0's data: the zip CRC check catches it
        with np.load(model_file) as z:
            first = bytes(z["core_0"].tobytes()[:8])
        blob[blob.index(first) + 3] ^= 0x55
        path.write_bytes(bytes(blob))
        fix = r"damaged \(BadZipFile: .*\); save the model again with tnlearn\.io\.save_model"
    else:
        with open(path, "wb") as fh:
            np.save(fh, np.zeros(3))
        fix = r"a single \.npy array, not an \.npz archive"
    with pytest.raises(ModelFormatError, match=fix):
        load_model(path)


def test_model_file_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nowhere.npz")


def test_bad_backend_override_is_not_blamed_on_the_file(model_file):
    with pytest.raises(ValueError, match=r"backend='jax' is not known") as info:
        load_model(model_file, backend="jax")
    assert not isinstance(info.value, ModelFormatError)


class _WritesMarker:
    """Unpickling this object creates the file ``path`` (``open(path, "w")``)."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("entry", ["header", "classes", "core_0", "bare-pickle"])
def test_pickled_objects_are_rejected_without_unpickling(model_file, tmp_path, entry):
    # the payload is live: unpickling it does create the marker
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_WritesMarker(control))).close()
    assert control.exists()

    marker = tmp_path / "marker"
    payload = np.empty(1, dtype=object)
    payload[0] = _WritesMarker(marker)
    path = tmp_path / "evil.npz"
    if entry == "bare-pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        with np.load(model_file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays[entry] = payload
        np.savez(path, allow_pickle=True, **arrays)
    with pytest.raises(ModelFormatError, match=r"not a tnlearn model file|not valid JSON|incomplete or inconsistent"):
        load_model(path)
    if entry == "header":
        with pytest.raises(ModelFormatError):
            read_header(path)
    assert not marker.exists(), "load_model unpickled an object from the file"
