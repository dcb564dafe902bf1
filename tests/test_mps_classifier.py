import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from tnlearn import MPSClassifier, embed, product_state


def test_digits_accuracy_target(digits):
    """The core issue's target: >= 95% test accuracy on the 8x8 digits at m = 16 within 4 sweeps."""
    X_train, X_test, y_train, y_test = digits
    clf = MPSClassifier(max_bond=16, n_sweeps=4, random_state=0).fit(X_train, y_train, eval_set=(X_test, y_test))
    assert clf.score(X_test, y_test) >= 0.95
    assert clf.history_[-1].test_accuracy == pytest.approx(clf.score(X_test, y_test))
    assert max(clf.history_[-1].bond_dims) == 16


def test_history_records(tiny_problem):
    X, y = tiny_problem
    # the squared loss with one step per bond, where the preconditioner's gain is the paper's step against Newton's
    clf = MPSClassifier(max_bond=4, n_sweeps=3, loss="mse", precondition=False, random_state=0).fit(X, y)
    assert len(clf.history_) == 3
    rec = clf.history_[-1]
    assert rec.sweep == 3 and len(rec.bond_dims) == X.shape[1] - 1 and rec.test_accuracy is None
    assert len(rec.truncation_errors) == 2 * (X.shape[1] - 1)
    assert rec.max_truncation_error == pytest.approx(max(rec.truncation_errors))
    assert rec.train_accuracy == pytest.approx(clf.score(X, y))
    losses = clf.history_.column("loss")
    assert losses[-1] < losses[0]
    # preconditioned steps get further than plain gradient steps
    pre = MPSClassifier(max_bond=4, n_sweeps=3, loss="mse", precondition=True, random_state=0).fit(X, y)
    assert max(pre.history_.column("loss")) < losses[-1]


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-9), ("float32", 2e-4)])
def test_mps_contracted_with_sample_equals_decision_function(tiny_problem, dtype, rtol):
    """The design invariant: (clf.mps_ & embedded_sample) ^ all == clf.outputs(sample)."""
    X, y = tiny_problem
    clf = MPSClassifier(max_bond=5, n_sweeps=1, dtype=dtype, random_state=0).fit(X, y)
    mps = clf.mps_
    assert type(mps).__name__ == "MatrixProductState" and mps.L == X.shape[1]
    Phi = embed(X[:4], "trig", np.float64)
    for i in range(4):
        ref = ((mps & product_state(Phi[i])) ^ all).transpose("label").data
        np.testing.assert_allclose(ref, clf.outputs(X[i : i + 1])[0], rtol=rtol, atol=rtol * 1e-2)
    labelled = [t for t in mps if "label" in t.inds]
    assert len(labelled) == 1 and set(labelled[0].tags) == {"I0"}


def test_same_seed_same_model_different_seed_differs(tiny_problem):
    X, y = tiny_problem
    a = MPSClassifier(max_bond=4, n_sweeps=1, random_state=3).fit(X, y).decision_function(X)
    b = MPSClassifier(max_bond=4, n_sweeps=1, random_state=3).fit(X, y).decision_function(X)
    c = MPSClassifier(max_bond=4, n_sweeps=1, random_state=4).fit(X, y).decision_function(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_sklearn_clone_params_pipeline_and_cross_val(digits):
    X_train, _, y_train, _ = digits
    clf = MPSClassifier(max_bond=6, n_sweeps=1, random_state=0)
    assert clone(clf).get_params() == clf.get_params()
    clf.set_params(max_bond=5)
    assert clf.max_bond == 5
    pipe = make_pipeline(MinMaxScaler(), MPSClassifier(max_bond=6, n_sweeps=1, random_state=0))
    with pytest.warns(UserWarning):  # MinMaxScaler maps some test pixels outside [0, 1]: clipped
        scores = cross_val_score(pipe, X_train[:400] * 16, y_train[:400], cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.4  # chance is 0.1


def test_string_labels_and_predict_proba(tiny_problem):
    X, y = tiny_problem
    names = np.array(["cat", "dog", "emu"])[y]
    clf = MPSClassifier(max_bond=4, n_sweeps=2, loss="cross_entropy", n_iter=2, random_state=0).fit(X, names)
    assert set(clf.predict(X)) <= set(names)
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert not hasattr(MPSClassifier(loss="mse"), "predict_proba")


@pytest.mark.parametrize("solver,loss,n_iter", [("cg", "mse", 2), ("gd", "mse", 2), ("gd", "cross_entropy", 1)])
def test_solvers_learn(tiny_problem, solver, loss, n_iter):
    X, y = tiny_problem
    clf = MPSClassifier(max_bond=6, n_sweeps=3, solver=solver, loss=loss, n_iter=n_iter, random_state=0)
    assert clf.fit(X, y).score(X, y) > 0.6


def test_identity_init_and_fixed_step(tiny_problem):
    X, y = tiny_problem
    clf = MPSClassifier(max_bond=4, n_sweeps=2, init="identity", random_state=0).fit(X, y)
    assert max(clf.history_[0].bond_dims) <= 4 and clf.score(X, y) > 0.4
    fixed = MPSClassifier(max_bond=4, n_sweeps=2, step_size=1e-3, random_state=0).fit(X, y)
    assert np.all(np.isfinite(fixed.decision_function(X)))


def test_warm_start_continues(tiny_problem):
    X, y = tiny_problem
    clf = MPSClassifier(max_bond=4, n_sweeps=1, random_state=0, warm_start=True)
    clf.fit(X, y)
    clf.fit(X, y)
    assert [r.sweep for r in clf.history_] == [1, 2]


def test_unfitted_model_errors():
    with pytest.raises(NotFittedError, match="fit"):
        MPSClassifier().predict(np.zeros((1, 4)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_bond": 0}, "max_bond"),
        ({"cutoff": -1.0}, "cutoff"),
        ({"solver": "adam"}, "solver"),
        ({"loss": "hinge"}, "loss"),
        ({"dtype": "float16"}, "dtype"),
        ({"solver": "cg", "loss": "cross_entropy"}, "cg"),
        ({"step_size": -1.0}, "step_size"),
        ({"n_sweeps": 0}, "n_sweeps"),
        ({"init": "random"}, "init"),
        ({"feature_map": "nope"}, "feature_map"),
    ],
)
def test_bad_hyperparameters(tiny_problem, kwargs, match):
    X, y = tiny_problem
    with pytest.raises(ValueError, match=match):
        MPSClassifier(**kwargs).fit(X, y)


@pytest.mark.parametrize(
    "X,y,match",
    [
        (np.zeros((5, 4)), np.zeros(4), r"inconsistent numbers of samples: \[5, 4\]"),
        (np.zeros((5, 2, 2)), np.zeros(5), "flatten"),
        (np.zeros((0, 4)), np.zeros(0), r"0 sample\(s\).*pass at least one sample"),
        (np.full((2, 4), np.nan), np.array([0, 1]), "NaN"),
        (np.full((2, 4), 3.0), np.array([0, 1]), "rescale"),
        (np.zeros((2, 4)), np.array([1, 1]), r"y has 1 class \(1\); a classifier needs at least 2"),
        (np.zeros((2, 1)), np.array([0, 1]), r"1 feature\(s\).*a minimum of 2 is required.*one site per feature"),
    ],
)
def test_bad_training_data(X, y, match):
    with pytest.raises(ValueError, match=match):
        MPSClassifier(max_bond=2, n_sweeps=1).fit(X, y)


def test_out_of_domain_values_are_clipped_with_a_warning_at_predict_time(tiny_problem):
    from tnlearn.embeddings import DataDomainWarning

    X, y = tiny_problem
    clf = MPSClassifier(max_bond=2, n_sweeps=1, random_state=0).fit(X, y)
    with pytest.warns(DataDomainWarning, match="clipped"):
        scores = clf.decision_function(X[:3] * 1.5)
    np.testing.assert_array_equal(scores, clf.decision_function(np.clip(X[:3] * 1.5, 0, 1)))


def test_predict_with_wrong_feature_count(tiny_problem):
    X, y = tiny_problem
    clf = MPSClassifier(max_bond=2, n_sweeps=1, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="expecting 10 features"):
        clf.predict(X[:, :5])


def test_unpooled_28x28_images_train_in_float32_without_under_or_overflow(digits):
    """784-site chains in float32: no under/overflow, and the outputs are those of the exact network."""
    from tnlearn import embed, product_state

    X_train, X_test, y_train, y_test = digits

    def to_28(X):  # 8x8 digits upsampled to 28x28 images (nearest neighbour)
        imgs = X.reshape(-1, 8, 8)
        idx = (np.arange(28) * 8) // 28
        return imgs[:, idx][:, :, idx].reshape(len(X), 784)

    Xtr, Xte = to_28(X_train[:200]), to_28(X_test[:20])
    clf = MPSClassifier(max_bond=6, n_sweeps=1, dtype="float32", random_state=0).fit(Xtr, y_train[:200])
    rec = clf.history_[-1]
    assert clf.head_.n_sites == 784 and np.isfinite(rec.loss) and rec.train_accuracy > 0.3
    assert np.all(np.isfinite(clf.decision_function(Xte)))
    scores = clf.outputs(Xte)
    assert np.all(np.isfinite(scores)) and np.all(np.abs(scores).max(axis=1) > 0)
    # the float32 engine against a float64 quimb contraction of the same (exported) network
    mps = clf.mps_.astype("float64")
    phi = embed(Xte[:3], dtype=np.float64)
    for row, got in zip(phi, scores):
        expected = (mps & product_state(row)).contract(output_inds=["label"])
        np.testing.assert_allclose(got, np.asarray(expected.data, dtype=np.float64), rtol=2e-3)


@pytest.mark.parametrize("config", [{}, {"truncation": "svd"}, {"precondition": False, "truncation": "svd"}],
                         ids=["default", "svd", "plain"])
def test_float64_training_does_not_amplify_rounding(digits, config):
    """Summing the samples in another order (chunk size) changes a float64 fit only at rounding level.

    The digits have pixels that are 0 in every image, so the data's density
    matrices are rank deficient: a start that depended on the eigensolver's
    arbitrary choices (signs, vectors of zero eigenvalues) made two runs that
    differ by one rounding end 1-40% apart, and a GPU could not reproduce the CPU.
    """
    X_train, X_test, y_train, _ = digits
    fits = [MPSClassifier(max_bond=6, n_sweeps=2, dtype="float64", random_state=0, chunk_size=cs, **config)
            .fit(X_train[:500], y_train[:500]).decision_function(X_test[:150]) for cs in (4096, 37)]
    np.testing.assert_allclose(fits[1], fits[0], rtol=1e-8, atol=1e-8 * np.abs(fits[0]).max())


def test_pca_start_reads_out_the_labels_by_least_squares(digits):
    """The initial label site is the least-squares read-out of the one-hot targets (no random tensor)."""
    from tnlearn.backend import get_backend
    from tnlearn.embeddings import embed
    from tnlearn.stages.mps import MPSHead, pca_init_cores

    X_train, _, y_train, _ = digits
    phi = np.ascontiguousarray(embed(X_train[:300], "trig", dtype=np.float64).transpose(1, 0, 2))
    Y = np.eye(10)[y_train[:300]]
    be = get_backend("numpy")
    cores, log_norm = pca_init_cores(phi, 10, 8, np.random.default_rng(0), be, targets=Y)
    head = MPSHead(cores, 0, log_norm, be)
    f = head.decision_function(phi, normalized=True)
    # the least-squares fit beats every rescaling of itself and a random read-out's best rescaling
    err = np.sum((f - Y) ** 2)
    for scale in (0.9, 1.1):
        assert err < np.sum((scale * f - Y) ** 2)
    rnd, _ = pca_init_cores(phi, 10, 8, np.random.default_rng(0), be)
    g = MPSHead(rnd, 0, 0.0, be).decision_function(phi, normalized=True)
    best = np.sum(g * Y) / np.sum(g * g)
    assert err < 0.5 * np.sum((best * g - Y) ** 2)
    # no bond wider than the data's rank: the first site's density matrix has rank <= d
    assert cores[-1].shape[0] <= 2


def _fit_history(clf, X, y):
    clf.fit(X, y)
    return clf.history_.column("loss"), [np.asarray(c) for c in clf.head_.cores]


def test_auto_loss_is_cross_entropy_from_one_sample_per_block_parameter(tiny_problem):
    """loss="auto": cross-entropy (3 steps per bond) once n >= m^2 d^2 L / 2, the squared loss (1 step) below;
    each is the same fit as the explicit setting, bit for bit."""
    X, y = tiny_problem
    threshold = 3**2 * 2**2 * 3 // 2  # max_bond=3, trig map d=2, 3 classes: 108 parameters, 54 samples
    for n, loss, n_iter in [(threshold, "cross_entropy", 3), (threshold - 1, "mse", 1)]:
        auto = MPSClassifier(max_bond=3, n_sweeps=2, random_state=0)
        losses, cores = _fit_history(auto, X[:n], y[:n])
        assert auto.loss_function_ == loss and auto.history_.meta["loss"] == loss
        assert auto.history_.meta["n_iter"] == n_iter
        assert hasattr(auto, "predict_proba") == (loss == "cross_entropy")
        explicit = MPSClassifier(max_bond=3, n_sweeps=2, loss=loss, n_iter=n_iter, random_state=0)
        ref_losses, ref_cores = _fit_history(explicit, X[:n], y[:n])
        assert losses == ref_losses and all(np.array_equal(a, b) for a, b in zip(cores, ref_cores))


def test_auto_loss_with_cg_is_the_squared_loss_and_n_iter_follows_an_explicit_loss(tiny_problem):
    X, y = tiny_problem
    cg = MPSClassifier(max_bond=2, n_sweeps=1, solver="cg", random_state=0).fit(X, y)  # 24 <= 120 samples
    assert cg.loss_function_ == "mse" and cg.history_.meta["n_iter"] == 1
    ce = MPSClassifier(max_bond=5, n_sweeps=1, loss="cross_entropy", random_state=0).fit(X, y)  # auto: mse
    assert ce.loss_function_ == "cross_entropy" and ce.history_.meta["n_iter"] == 3
    mse = MPSClassifier(max_bond=2, n_sweeps=1, loss="mse", random_state=0).fit(X, y)  # auto: cross-entropy
    assert mse.loss_function_ == "mse" and mse.history_.meta["n_iter"] == 1
    fixed = MPSClassifier(max_bond=3, n_sweeps=1, n_iter=2, random_state=0).fit(X, y)
    assert fixed.loss_function_ == "cross_entropy" and fixed.history_.meta["n_iter"] == 2


def test_a_warm_start_on_other_samples_is_not_judged_by_the_old_samples_loss(tmp_path):
    """The old fit's last loss measures other samples: a continued fit on a subset must not be rolled back
    against it (it was, with a DivergenceWarning, when the subset's loss was higher); on the same samples
    the first sweep is still guarded against that record, as in one uninterrupted fit."""
    import warnings

    rng = np.random.default_rng(0)
    X = rng.random((120, 10))
    y = (X[:, :3].sum(axis=1) * 1.7).astype(int) % 3
    clf = MPSClassifier(max_bond=3, n_sweeps=1, random_state=0, warm_start=True).fit(X, y)
    before = [a.copy() for a in clf.mps_.arrays]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DivergenceWarning
        clf.fit(X[:40], y[:40])
    assert len(clf.history_) == 2 and clf.history_.meta.get("stopped") is None
    assert clf.history_[1].loss > clf.history_[0].loss  # another data set's loss, not a divergence
    assert any(not np.array_equal(a, b) for a, b in zip(before, clf.mps_.arrays))
    assert clf.history_.meta["data_first_record"] == 1
    # the same samples, through a model file too: the first sweep is judged against the record before
    from tnlearn.io import load_model, save_model

    save_model(clf, tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz").set_params(warm_start=True, n_sweeps=1)
    judged = []
    loaded._lost_accuracy = lambda number, acc, hint="": judged.append(loaded._guarding_record()) or False
    loaded.fit(X[:40], y[:40])
    assert [r.sweep for r in judged] == [2] and len(loaded.history_) == 3
    # a continuation on other samples whose every sweep was rolled back leaves no record on them: a retry
    # on those samples is still not judged against the old samples' records
    other = MPSClassifier(max_bond=3, n_sweeps=1, random_state=0, warm_start=True).fit(X, y)
    other._run_one_sweep = lambda *a, **k: None  # the sweep raised the loss: rolled back
    other.fit(X[40:80], y[40:80])
    del other._run_one_sweep
    assert len(other.history_) == 1 and other._guarding_record() is None
    other.fit(X[40:80], y[40:80])
    assert len(other.history_) == 2 and other.history_.meta["data_first_record"] == 1


def test_a_warm_start_fit_keeps_the_loss_the_first_fit_chose(tiny_problem, tmp_path):
    from tnlearn.io import load_model, save_model

    X, y = tiny_problem
    clf = MPSClassifier(max_bond=3, n_sweeps=1, random_state=0, warm_start=True).fit(X, y)
    assert clf.loss_function_ == "cross_entropy"
    clf.fit(X[:40], y[:40])  # fewer than half a block's 108 parameters: auto alone would pick mse
    assert clf.loss_function_ == "cross_entropy" and clf.history_.meta["n_iter"] == 3
    save_model(clf, tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.loss_function_ == "cross_entropy"
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    mse = MPSClassifier(max_bond=5, n_sweeps=1, random_state=0).fit(X, y)  # 120 < 300 / 2
    save_model(mse, tmp_path / "mse.npz")
    assert not hasattr(load_model(tmp_path / "mse.npz"), "predict_proba")
    with pytest.raises(AttributeError) as info:
        mse.predict_proba(X)
    assert "squared loss" in str(info.value) and "loss='cross_entropy'" in str(info.value)
    for clf in (MPSClassifier(loss="mse"), MPSClassifier(max_bond=5, n_sweeps=1, loss="mse", random_state=0).fit(X, y)):
        with pytest.raises(AttributeError, match=r"loss='mse'.*not\s+log-probabilities.*loss='cross_entropy'"):
            clf.predict_proba(X)
    assert MPSClassifier.predict_proba.__doc__.startswith("Softmax")  # the class keeps the documented method

