"""tn-cnn: a CNN whose kernels and dense layer are tensor trains, trained by safeguarded sweeps."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

from tnlearn import TNCNNClassifier
from tnlearn.io import load_model, save_model


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16, y, test_size=0.25, stratify=y, random_state=0)


@pytest.fixture(scope="module")
def fitted(digits):
    X_tr, X_te, y_tr, y_te = digits
    return TNCNNClassifier(channels=(8, 16), n_hidden=64, n_sweeps=2, random_state=0).fit(X_tr, y_tr,
                                                                                           eval_set=(X_te, y_te))


def test_learns_the_digits_and_records_every_stage(fitted, digits):
    X_tr, X_te, y_tr, y_te = digits
    assert fitted.score(X_te, y_te) >= 0.95
    h = fitted.history_
    assert h[-1].test_accuracy == pytest.approx(fitted.score(X_te, y_te))
    assert list(h[0].stages) == ["conv1", "conv2", "dense"] == fitted.stage_names()
    for record in h:
        for name, st in record.stages.items():
            assert st["loss_after"] <= st["loss_before"] * (1 + 1e-6), name
            assert st["max_truncation_error"] >= 0 and st["seconds"] > 0
        assert record.n_params == fitted.n_params_
    for name, stage in zip(fitted.stage_names(), fitted.stages_):
        assert h[-1].stages[name]["bond_dims"] == stage.bond_dims
        kh, kw = stage.kernel
        assert h[-1].stages[name]["dense_params"] == kh * kw * stage.c_in * stage.c_out + stage.c_out
    # the recorded loss is the sweeps' objective: it never rises, and it is the mean training cross-entropy
    losses = h.column("loss")
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:]))
    p = fitted.predict_proba(X_tr)
    ce = -np.mean(np.log(p[np.arange(len(y_tr)), np.searchsorted(fitted.classes_, y_tr)]))
    assert ce == pytest.approx(losses[-1], rel=1e-3)


def test_the_dense_rank_cap_holds_and_parameters_add_up(fitted):
    dense = fitted.stages_[-1]
    assert max(dense.bond_dims) <= fitted.max_rank
    total = sum(st.tt.n_params + st.bias.size for st in fitted.stages_) + fitted.V_.size + fitted.b_.size
    assert fitted.n_params_ == total


def test_an_absurd_step_is_undone_bond_by_bond_and_the_loss_never_rises(digits):
    X_tr, _, y_tr, _ = digits
    clf = TNCNNClassifier(channels=(4,), n_hidden=16, n_sweeps=2, learning_rate=5.0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X_tr[:400], y_tr[:400])
    assert sum(r.rejected_updates for r in clf.history_) > 0
    for r in clf.history_:
        for st in r.stages.values():
            assert st["loss_after"] <= st["loss_before"]
    losses = clf.history_.column("loss")
    assert all(b <= a for a, b in zip(losses, losses[1:]))


def test_same_seed_same_network(digits):
    X_tr, _, y_tr, _ = digits
    make = lambda: TNCNNClassifier(channels=(4,), n_hidden=16, n_sweeps=1, random_state=3).fit(X_tr[:300], y_tr[:300])  # noqa: E731
    np.testing.assert_array_equal(make().decision_function(X_tr[:20]), make().decision_function(X_tr[:20]))


def test_save_and_load_give_the_same_scores(fitted, digits, tmp_path):
    X_tr, X_te, _, _ = digits
    path = tmp_path / "cnn.npz"
    save_model(fitted, path)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.decision_function(X_te), fitted.decision_function(X_te))
    assert loaded.n_params_ == fitted.n_params_
    assert len(loaded.history_) == len(fitted.history_)


def test_a_file_with_a_broken_stage_is_refused(fitted, tmp_path):
    from tnlearn.io import ModelFormatError

    header, arrays = fitted._get_state()
    clone = TNCNNClassifier(**fitted.get_params())
    clone.n_features_in_, clone.classes_ = fitted.n_features_in_, fitted.classes_
    bad = dict(header, stages=[dict(header["stages"][0], kernel=[3, "3"])] + header["stages"][1:])
    with pytest.raises(ValueError, match="kernel"):
        clone._set_state(bad, arrays, fitted._backend)
    arrays_bad = dict(arrays, V=arrays["V"][:-1])
    with pytest.raises(ValueError, match="output layer"):
        clone._set_state(header, arrays_bad, fitted._backend)
    assert issubclass(ModelFormatError, ValueError)


def test_images_that_are_not_square_need_image_shape(digits):
    X_tr, _, y_tr, _ = digits
    X = np.hstack([X_tr, X_tr[:, :8]])  # 72 features: 8 x 9
    with pytest.raises(ValueError, match=r"not a square grey image; pass image_shape"):
        TNCNNClassifier(n_sweeps=1).fit(X, y_tr)
    clf = TNCNNClassifier(channels=(4,), n_hidden=16, n_sweeps=1, image_shape=(8, 9), random_state=0).fit(X, y_tr)
    assert clf.stages_[0].output_shape((8, 9, 1)) == (4, 4, 4)
    with pytest.raises(ValueError, match=r"image_shape=\(8, 8\) does not hold 72 features"):
        TNCNNClassifier(image_shape=(8, 8)).fit(X, y_tr)


def test_bad_settings_name_the_fix(digits):
    X_tr, _, y_tr, _ = digits
    with pytest.raises(ValueError, match=r"channels=\(\) must be a non-empty tuple"):
        TNCNNClassifier(channels=()).fit(X_tr, y_tr)
    with pytest.raises(ValueError, match=r"output of convolution 4 is smaller than pool_size=2: use fewer convolutions \(entries in channels"):
        TNCNNClassifier(channels=(2, 2, 2, 2)).fit(X_tr, y_tr)  # 8 -> 4 -> 2 -> 1: the fourth cannot pool


def test_a_saved_model_resumed_with_warm_start_continues_bit_for_bit(digits, tmp_path):
    X_tr, X_te, y_tr, _ = digits
    params = dict(channels=(4,), n_hidden=16, random_state=5, learning_rate=2e-2)  # large: rejections happen too
    straight = TNCNNClassifier(n_sweeps=3, **params).fit(X_tr, y_tr)
    first = TNCNNClassifier(n_sweeps=1, **params).fit(X_tr, y_tr)
    save_model(first, tmp_path / "one.npz")
    resumed = load_model(tmp_path / "one.npz")
    resumed.set_params(warm_start=True, n_sweeps=2).fit(X_tr, y_tr)
    assert len(resumed.history_) == 3
    assert resumed.history_.column("loss") == straight.history_.column("loss")
    np.testing.assert_array_equal(resumed.decision_function(X_te), straight.decision_function(X_te))


def test_warm_start_refuses_new_classes(fitted, digits):
    X_tr, _, y_tr, _ = digits
    clone = copy.deepcopy(fitted)
    with pytest.raises(ValueError, match=r"classes \[10\] unseen in the first fit"):
        clone.set_params(warm_start=True, n_sweeps=1).fit(X_tr[:20], np.full(20, 10))


def _dense_layers(model):
    layers = []
    for st in model.stages_:
        kh, kw = st.kernel
        layers.append((st.weight().reshape(kh, kw, st.c_in, st.c_out), st.bias))
    return layers + [(model.V_, model.b_)]


def test_init_from_a_trained_cnn_starts_where_it_ended(fitted, digits):
    X_tr, _, y_tr, _ = digits
    X_te, y_te = digits[1], digits[3]
    again = TNCNNClassifier(**{**fitted.get_params(), "n_sweeps": 1}).fit(X_tr, y_tr, eval_set=(X_te, y_te),
                                                                          init_from=_dense_layers(fitted))
    compressed = again.history_.meta["compressed"]  # the network before any sweep: the fitted one, exactly
    assert compressed["test_accuracy"] == pytest.approx(fitted.history_[-1].test_accuracy, abs=1 / len(y_te))
    assert compressed["loss"] == pytest.approx(fitted.history_[-1].loss, rel=1e-3)
    report = again.history_.meta["compression"]
    assert again.history_.meta["init"] == "dense" and list(report) == fitted.stage_names()
    for name, r in report.items():
        assert r["relative_error"] < 1e-5, name  # the fitted stages have these ranks: the TT-SVD is exact
    # the sweeps start from the trained network and never raise its loss
    assert again.history_[0].stages["conv1"]["loss_before"] == pytest.approx(fitted.history_[-1].loss, rel=1e-3)
    assert again.history_[0].loss <= fitted.history_[-1].loss * (1 + 1e-3)


def test_init_from_at_lower_ranks_compresses_and_wrong_shapes_are_refused(fitted, digits):
    X_tr, _, y_tr, _ = digits
    layers = _dense_layers(fitted)
    small = TNCNNClassifier(**{**fitted.get_params(), "n_sweeps": 1, "conv_rank": 4, "max_rank": 2})
    small.fit(X_tr, y_tr, init_from=layers)
    report = small.history_.meta["compression"]
    assert max(report["conv2"]["ranks"]) <= 4 and max(report["dense"]["ranks"]) <= 2
    assert report["dense"]["relative_error"] > 1e-3
    assert report["dense"]["tt_params"] < report["dense"]["dense_params"]
    with pytest.raises(ValueError, match=r"init_from must be a list of 4 \(weight, bias\) pairs — conv1 \(3, 3, 1, 8\)"):
        TNCNNClassifier(**fitted.get_params()).fit(X_tr, y_tr, init_from=layers[:2])
    bad = [(np.zeros((5, 5, 1, 8)), np.zeros(8))] + layers[1:]
    with pytest.raises(ValueError, match=r"init_from conv1: weight \(5, 5, 1, 8\).*pass a weight of shape \(3, 3, 1, 8\)"):
        TNCNNClassifier(**fitted.get_params()).fit(X_tr, y_tr, init_from=bad)
    with pytest.raises(ValueError, match=r"init_from dense: weight \(7,\) .*pass a weight of shape \(64, 64\) \(inputs"):
        TNCNNClassifier(**fitted.get_params()).fit(X_tr, y_tr, init_from=layers[:2] + [(np.zeros(7), layers[2][1])]
                                                   + layers[3:])
    with pytest.raises(ValueError, match=r"that are not all \(weight, bias\) pairs"):
        TNCNNClassifier(**fitted.get_params()).fit(X_tr, y_tr, init_from=[w for w, _ in layers])
    # a refused init_from leaves nothing half built: a later fit starts afresh
    failed = TNCNNClassifier(**{**fitted.get_params(), "n_sweeps": 1})
    with pytest.raises(ValueError, match="output layer"):
        failed.fit(X_tr, y_tr, init_from=layers[:-1] + [(layers[-1][0].T, layers[-1][1])])
    assert not hasattr(failed, "stages_") and not hasattr(failed, "history_")
    failed.set_params(warm_start=True).fit(X_tr[:200], y_tr[:200])
    with pytest.raises(ValueError, match="set warm_start=False"):
        TNCNNClassifier(**{**fitted.get_params(), "warm_start": True}).fit(X_tr, y_tr).fit(X_tr, y_tr, init_from=layers)


def test_minibatch_adam_walks_epochs_and_averages_the_second_half():
    from tnlearn.models._adam import Adam, minibatch_adam

    seen, draws = [], []

    def draw():
        draws.append(1)
        return np.arange(5)

    def gradients(idx, p):
        seen.append(list(idx))
        return {"w": p["w"] - 3.0}  # the gradient of |w - 3|^2 / 2

    last, mean = minibatch_adam(Adam(0.1), {"w": np.zeros(2)}, gradients, draw, steps=6, batch_size=2,
                                average_from=3)
    assert seen == [[0, 1], [2, 3], [4], [0, 1], [2, 3], [4]] and len(draws) == 2  # short last batch, new epoch
    # the average of iterates 4..6 lies behind the last one on the way to 3
    assert np.all(0 < mean["w"]) and np.all(mean["w"] < last["w"]) and np.all(last["w"] < 3)
    assert minibatch_adam(Adam(0.1), {"w": np.zeros(2)}, gradients, draw, 1, 2)[1] is None


def test_non_overlapping_patches_with_stride(digits):
    X_tr, X_te, y_tr, y_te = digits
    clf = TNCNNClassifier(channels=(8,), kernel_size=2, stride=2, pool_size=1, n_hidden=32, n_sweeps=1,
                          random_state=0).fit(X_tr, y_tr)
    assert clf.stages_[0].output_shape((8, 8, 1)) == (4, 4, 8)  # 2x2 patches side by side: a 4x4 grid
    assert clf.stages_[1].tt.in_features == 4 * 4 * 8
    assert clf.score(X_te, y_te) > 0.9


@pytest.mark.parametrize("change, message", [
    ({"channels": (8, 8)}, r"channels=\(8, 8\) \(fitted: \(8, 16\)\)"),
    ({"n_hidden": 32}, r"n_hidden=32 \(fitted: 64\)"),
    ({"n_hidden": None}, r"n_hidden=None \(fitted: 64\)"),
    ({"kernel_size": 5, "stride": 2}, r"kernel_size=5 \(fitted: 3\); stride=2 \(fitted: 1\)"),
    ({"max_rank": 2}, r"max_rank=2 is below the fitted TT-ranks \[8, 8\].*pass its layers as init_from"),
    ({"dtype": "float64"}, r"dtype='float64' \(fitted: 'float32'\)"),
])
def test_warm_start_refuses_settings_the_fitted_network_does_not_have(fitted, digits, change, message):
    X_tr, _, y_tr, _ = digits
    clone = copy.deepcopy(fitted).set_params(warm_start=True, n_sweeps=1, **change)
    with pytest.raises(ValueError, match=message):
        clone.fit(X_tr, y_tr)
    assert len(clone.history_) == len(fitted.history_)  # nothing trained
