"""Sweeps that never silently make the model worse: bond safeguard, sweep guard, early stopping, L2."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from tnlearn import MPSClassifier
from tnlearn.backend import get_backend
from tnlearn.embeddings import embed
from tnlearn.models._training import DivergenceWarning
from tnlearn.solvers import SolverOptions
from tnlearn.stages.mps import MPSHead, pca_init_cores
from tnlearn.sweeps import SweepOptions, build_environments, objective_tolerance, sweep


def _problem(seed, n=160, n_features=7, n_classes=3, dtype=np.float64, constant=0):
    """A random small classification problem; ``constant`` features are 0 in every sample (rank deficiency)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, n_features))
    X[:, :constant] = 0.0
    y = (X[:, constant:].sum(axis=1) * 2.3 + rng.normal(0, 0.2, n)).astype(int) % n_classes
    phi = np.ascontiguousarray(embed(X, "trig", dtype=dtype).transpose(1, 0, 2))
    Y = np.eye(n_classes, dtype=dtype)[y]
    return phi, Y


COMBOS = [
    dict(zip(("solver", "loss", "precondition", "truncation", "normalize", "dtype"), c))
    for c in itertools.product(("gd", "cg"), ("mse", "cross_entropy"), (True, False), ("data", "svd"), (True, False),
                               (np.float64, np.float32))
    if not (c[0] == "cg" and c[1] == "cross_entropy")
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(str(v) for v in c.values()).replace("<class '", ""))
def test_no_bond_update_raises_its_objective_when_the_label_can_move_freely(seed, combo):
    """Over random small problems and every option combination: with bonds wide enough to carry the label
    across, no bond update leaves its objective higher than before (beyond rounding)."""
    phi, Y = _problem(seed, dtype=combo["dtype"], constant=seed)  # seed 1: a constant feature (rank-deficient Grams)
    be = get_backend("numpy")
    cores, log_norm = pca_init_cores(phi, Y.shape[1], 64, np.random.default_rng(seed), be, targets=Y)
    head = MPSHead(cores, 0, log_norm, be)
    opts = SweepOptions(
        max_bond=64, cutoff=0.0, truncation=combo["truncation"], normalize_samples=combo["normalize"],
        solver=SolverOptions(combo["solver"], combo["loss"], 2, precondition=combo["precondition"]),
    )
    envs = build_environments(head, phi, opts)
    for _ in range(2):
        result = sweep(head, envs, phi, Y, opts)
        for info in result.infos:
            assert np.isfinite(info.objective_after)
            assert info.objective_after <= info.objective_before + objective_tolerance(info.objective_before, phi.dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_absurd_step_is_undone_bond_by_bond(dtype):
    """A fixed step a million times too large would blow the network up; every such update is undone."""
    phi, Y = _problem(3, dtype=np.dtype(dtype))
    X = np.random.default_rng(3).random((160, 7))
    y = np.argmax(Y, axis=1)
    clf = MPSClassifier(max_bond=6, n_sweeps=2, step_size=1e6, precondition=False, dtype=dtype, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        clf.fit(X, y)
    assert all(np.isfinite(r.loss) for r in clf.history_.records)
    assert clf.history_[0].rejected_updates > 0
    assert np.all(np.isfinite(clf.decision_function(X)))


def test_the_recorded_loss_never_rises(digits):
    """Digits at m = 64 (the issue's reproducer: the loss rose every sweep): the recorded loss falls or the
    fit stops with the previous sweep's network, and test accuracy never collapses."""
    X_train, X_test, y_train, y_test = digits
    clf = MPSClassifier(max_bond=64, n_sweeps=4, random_state=0).fit(X_train, y_train, eval_set=(X_test, y_test))
    losses = clf.history_.column("loss")
    accs = clf.history_.column("test_accuracy")
    assert all(b <= a * (1 + 1e-5) for a, b in zip(losses, losses[1:]))
    assert min(accs) >= 0.97 and all(b >= a - 0.01 for a, b in zip(accs, accs[1:]))


@pytest.mark.parametrize("loss", ["mse", "auto"])
def test_svd_truncation_with_the_preconditioner_does_not_unlearn(loss):
    """The issue's reproducer: 800 samples, 20 features in [0, 1], 3 classes, m = 6, plain SVD splits with the
    preconditioner made every later sweep worse (loss 0.235 -> 0.67, train accuracy 0.87 -> 0.51).  It had
    the squared loss; today's default (loss="auto") takes cross-entropy here (800 >= 6^2 * 2^2 * 3)."""
    rng = np.random.default_rng(0)
    X = rng.random((800, 20))
    y = (X[:, :5].sum(axis=1) * 1.3).astype(int) % 3
    if loss == "mse":
        # here the second sweep's loss rises by 13%: it is rolled back, with a warning that names truncation='data'
        with pytest.warns(DivergenceWarning, match="truncation='data'"):
            clf = MPSClassifier(max_bond=6, n_sweeps=5, truncation="svd", loss="mse", random_state=0).fit(X, y)
    else:
        clf = MPSClassifier(max_bond=6, n_sweeps=5, truncation="svd", random_state=0).fit(X, y)
        assert clf.loss_function_ == "cross_entropy"
    losses = clf.history_.column("loss")
    train = clf.history_.column("train_accuracy")
    assert all(b <= a * (1 + 1e-5) for a, b in zip(losses, losses[1:]))
    assert min(train) >= train[0] - 0.02


def test_a_diverged_sweep_is_rolled_back_exactly_and_warns(digits, monkeypatch):
    """A sweep that leaves a non-finite network is undone: the fit ends with sweep 1's network, exactly."""
    import tnlearn.models.mps_classifier as mpsc

    X_train, X_test, y_train, _ = digits
    real = mpsc.sweep
    calls = {"n": 0}

    def exploding(head, *a, **k):
        calls["n"] += 1
        result = real(head, *a, **k)
        if calls["n"] == 2:
            head.cores[5] = head.cores[5] * np.inf
            result.infos[3].objective_after = float("inf")
        return result

    monkeypatch.setattr(mpsc, "sweep", exploding)
    after_first = []
    clf = MPSClassifier(max_bond=8, n_sweeps=3, dtype="float64", random_state=0)
    with pytest.warns(DivergenceWarning, match=r"sweep 2 diverged \(the training loss became inf\).*rolled back"):
        clf.fit(X_train[:400], y_train[:400], on_sweep=lambda m: after_first.append(m.decision_function(X_test)))
    assert len(clf.history_) == 1 and len(after_first) == 1
    np.testing.assert_array_equal(clf.decision_function(X_test), after_first[0])


def test_early_stopping_keeps_the_best_sweep_exactly(digits):
    X_train, X_test, y_train, _ = digits
    snapshots = {}

    def remember(model):
        snapshots[len(model.history_)] = model.decision_function(X_test)

    clf = MPSClassifier(max_bond=12, n_sweeps=5, early_stopping=True, validation_fraction=0.2, n_iter_no_change=1,
                        tol=0.0, dtype="float64", random_state=0)
    clf.fit(X_train, y_train, on_sweep=remember)
    scores = clf.validation_scores_
    assert len(scores) == len(clf.history_) and clf.history_.column("validation_accuracy") == scores
    assert clf.best_validation_score_ == max(scores)
    assert clf.best_sweep_ == 1 + int(np.argmax(scores))
    np.testing.assert_array_equal(clf.decision_function(X_test), snapshots[clf.best_sweep_])
    # with n_iter_no_change=1 the fit stops at the first sweep without a gain (or earlier, saying why)
    assert len(scores) == 5 or scores[-1] <= max(scores[:-1]) or "would have raised" in clf.history_.meta["stopped"]


def test_early_stopping_holds_out_a_stratified_validation_set(digits):
    X_train, _, y_train, _ = digits
    clf = MPSClassifier(max_bond=4, n_sweeps=1, early_stopping=True, validation_fraction=0.25, random_state=0)
    clf.fit(X_train, y_train)
    assert 0 <= clf.validation_scores_[0] <= 1
    with pytest.raises(ValueError, match="validation_fraction=0.0001 leaves 0 of"):
        MPSClassifier(max_bond=4, n_sweeps=1, early_stopping=True, validation_fraction=1e-4).fit(X_train, y_train)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "big", True])
def test_alpha_must_be_a_finite_non_negative_number(digits, bad):
    X_train, _, y_train, _ = digits
    with pytest.raises(ValueError, match="The 'alpha' parameter of MPSClassifier must be .*For example alpha='auto'|"
                                         "alpha=.* must be .auto. or a finite number >= 0"):
        MPSClassifier(alpha=bad).fit(X_train[:50], y_train[:50])


def test_the_l2_penalty_shrinks_the_network_and_is_in_the_loss(digits):
    X_train, _, y_train, _ = digits
    X, y = X_train[:500], y_train[:500]
    fits = {a: MPSClassifier(max_bond=8, n_sweeps=2, alpha=a, dtype="float64", random_state=0).fit(X, y)
            for a in (0.0, 30.0)}
    assert fits[30.0].head_.log_norm < fits[0.0].head_.log_norm
    plain, penalised = fits[0.0].history_[-1], fits[30.0].history_[-1]
    assert plain.loss == pytest.approx(plain.data_loss)
    expected = 0.5 * 30.0 * np.exp(2 * fits[30.0].head_.log_norm) / len(X)
    assert penalised.loss - penalised.data_loss == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("shape", [(12, 40), (40, 12), (9, 9)])
def test_rank_truncated_is_the_truncated_svd(rng, shape):
    from tnlearn.sweeps import rank_truncated
    from tnlearn.truncation import truncated_svd

    M = rng.standard_normal(shape)
    U, s, Vh, _ = truncated_svd(M, max_bond=5)
    np.testing.assert_allclose(rank_truncated(M, 5), (U * s) @ Vh, atol=1e-10)
    np.testing.assert_array_equal(rank_truncated(M, 20), M)


def test_a_rise_above_check_rise_is_compared_with_the_old_block(monkeypatch):
    """Updates that raise their bond's objective by more than check_rise, and only those, meet the old block."""
    import tnlearn.sweeps as sw

    phi, Y = _problem(5, n=200, n_features=8, n_classes=4)
    be = get_backend("numpy")
    seen = []
    real = sw._Sweeper.old_block_is_better

    def spy(self, upd):
        verdict = real(self, upd)
        seen.append(verdict)
        return verdict

    monkeypatch.setattr(sw._Sweeper, "old_block_is_better", spy)
    for check_rise, capped in ((1e-3, 3), (np.inf, 3)):
        cores, log_norm = pca_init_cores(phi, Y.shape[1], capped, np.random.default_rng(0), be, targets=Y)
        head = MPSHead(cores, 0, log_norm, be)
        opts = SweepOptions(max_bond=capped, check_rise=check_rise, solver=SolverOptions(precondition=True))
        envs = build_environments(head, phi, opts)
        n_before = len(seen)
        infos = sweep(head, envs, phi, Y, opts).infos
        if np.isinf(check_rise):
            assert len(seen) == n_before
        else:  # a bond of 3 cannot carry 4 labels: some updates rise and are checked, the kept one is finite
            assert len(seen) - n_before >= 1
            assert all(np.isfinite(i.objective_after) for i in infos)
            assert all(i.fraction in (0.0, 1.0) for i in infos)


def test_a_sweep_that_costs_training_accuracy_is_not_kept(digits):
    """The issue's `--bond-dim 6 --sweeps 6` (test 92.4 -> 86.0%): with bonds narrower than the ten classes the
    squared loss keeps falling while the classifier gets worse; the fit keeps the better network and says why."""
    X_train, X_test, y_train, y_test = digits
    # the squared loss, as in the issue (the default takes cross-entropy here: 92.0 / 93.3 / 93.8%)
    clf = MPSClassifier(max_bond=6, n_sweeps=6, loss="mse", random_state=0).fit(
        X_train, y_train, eval_set=(X_test, y_test))
    accuracies = [r.test_accuracy for r in clf.history_]
    assert all(b >= a - 0.01 for a, b in zip(accuracies, accuracies[1:]))
    assert clf.score(X_test, y_test) == pytest.approx(accuracies[-1]) and accuracies[-1] > 0.9
    assert "training accuracy fell" in clf.history_.meta["stopped"] and "cross_entropy" in clf.history_.meta["stopped"]
    train = [r.train_accuracy for r in clf.history_]
    assert all(b >= a - 0.01 for a, b in zip(train, train[1:]))
