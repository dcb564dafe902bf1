"""TT-net training quality: safeguarded bond updates, the default schedule, ARD rank determination."""

from __future__ import annotations

import numpy as np
import pytest

from tnlearn import ard
from tnlearn.models._adam import MIN_STEPS_PER_BOND
from tnlearn.models.tt_net import TTNetClassifier
from tnlearn.stages.tt import TTMatrix


@pytest.fixture(scope="module")
def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


def test_slice_variances_and_support():
    s = np.array([4.0, 2.0, 0.04, 0.0])
    lam = ard.slice_variances(s, slice_size=30)
    np.testing.assert_allclose(lam, s**2 / 32)
    np.testing.assert_allclose(ard.slice_variances(s, 30, a=1.0, b=0.5), (s**2 + 1.0) / 34)
    assert ard.n_supported(lam, 1e-2) == 3  # std ratio 0.01 is kept, 0 is cut
    assert ard.n_supported(lam, 0.1) == 2
    assert ard.n_supported(np.zeros(3), 0.1) == 1  # never an empty bond
    with pytest.raises(ValueError, match="slice_size"):
        ard.slice_variances(s, 0)


def test_block_penalty_is_the_weighted_l2_and_its_gradient(rng):
    block = rng.standard_normal((3, 2, 2, 2, 2, 4))
    left, right = rng.uniform(0.5, 2, 3), rng.uniform(0.5, 2, 4)
    prec = ard.precision_profile(left, right, block.ndim)
    n = 50
    penalty, grad = ard.block_penalty(block, prec, n)
    pl, pr = 1 / left - 1 / left.max(), 1 / right - 1 / right.max()  # relative to the strongest slice
    assert pl.min() == 0 and pr.min() == 0
    expected = (sum((block[a] ** 2).sum() * pl[a] for a in range(3))
                + sum((block[..., b] ** 2).sum() * pr[b] for b in range(4))) / (2 * n)
    assert penalty == pytest.approx(expected)
    eps, idx = 1e-6, (1, 0, 1, 1, 0, 2)
    bumped = block.copy()
    bumped[idx] += eps
    assert (ard.block_penalty(bumped, prec, n)[0] - penalty) / eps == pytest.approx(grad[idx], rel=1e-4)
    # a leg without estimates is not penalised
    only_left = ard.precision_profile(left, None, block.ndim)
    assert ard.block_penalty(block, only_left, n)[0] == pytest.approx(
        sum((block[a] ** 2).sum() * pl[a] for a in range(3)) / (2 * n))
    assert ard.precision_profile(None, None, 6) is None
    assert ard.block_penalty(block, None, n)[0] == 0.0


def test_orthogonalize_keeps_the_matrix_and_puts_the_norm_in_the_centre(rng):
    tt = TTMatrix.random((2, 3, 2, 2), (2, 2, 3, 2), 3, rng, np.float64)
    W = tt.to_dense()
    tt.orthogonalize(2)
    np.testing.assert_allclose(tt.to_dense(), W, atol=1e-12)
    for k in (0, 1):  # left-orthonormal
        c = tt.cores[k].reshape(-1, tt.cores[k].shape[3])
        np.testing.assert_allclose(c.T @ c, np.eye(c.shape[1]), atol=1e-12)
    c = tt.cores[3].reshape(tt.cores[3].shape[0], -1)  # right-orthonormal
    np.testing.assert_allclose(c @ c.T, np.eye(c.shape[0]), atol=1e-12)
    assert np.linalg.norm(tt.cores[2]) == pytest.approx(np.linalg.norm(W))
    with pytest.raises(ValueError, match="center=4 is not a core"):
        tt.orthogonalize(4)


def test_default_schedule_and_width_learn_the_small_digits(digits_split):
    X_tr, X_te, y_tr, y_te = digits_split
    clf = TTNetClassifier(random_state=0).fit(X_tr, y_tr, eval_set=(X_te, y_te))
    # 1,347 samples = 11 minibatches: "auto" gives each bond 100 Adam steps, not 5
    assert clf._steps_per_bond(len(X_tr)) == MIN_STEPS_PER_BOND
    assert clf._steps_per_bond(60000) == round(0.5 * 60000 / 128)
    assert clf.tt_.out_features == 256  # the default hidden layer: 4 x the 64 inputs
    assert clf.score(X_te, y_te) >= 0.97
    rec = clf.history_[-1]
    assert rec.tt_ranks == clf.tt_.ranks and rec.compression == pytest.approx(clf.compression_)
    assert rec.n_params == clf.tt_.n_params and rec.data_loss == rec.loss  # no prior: nothing added


def test_a_bond_update_that_raises_the_loss_is_undone(digits_split):
    """With an absurd Adam step every sweep would blow up; the safeguard keeps the loss non-increasing."""
    X_tr, _, y_tr, _ = digits_split
    clf = TTNetClassifier(n_cores=3, max_rank=2, n_sweeps=3, learning_rate=3.0, epochs_per_bond=1.0,
                          random_state=0).fit(X_tr, y_tr)
    losses = clf.history_.column("loss")
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert all(b <= a * (1 + 1e-5) for a, b in zip(losses, losses[1:]))
    assert sum(clf.history_.column("rejected_updates")) > 0
    # a sensible step is accepted (almost) everywhere
    good = TTNetClassifier(n_cores=3, max_rank=2, n_sweeps=2, random_state=0).fit(X_tr, y_tr)
    assert sum(good.history_.column("rejected_updates")) <= 1


def test_every_bond_update_is_checked_against_the_objective(digits_split, monkeypatch):
    X_tr, _, y_tr, _ = digits_split
    seen = []
    original = TTNetClassifier._update_bond

    def spy(self, bond, direction, Xp, Y, y_dev, rng, adam, truncation, loss_before):
        info, loss, accepted = original(self, bond, direction, Xp, Y, y_dev, rng, adam, truncation, loss_before)
        seen.append((loss_before, loss, accepted, self._objective(Xp, Y)))
        return info, loss, accepted

    monkeypatch.setattr(TTNetClassifier, "_update_bond", spy)
    TTNetClassifier(n_cores=3, max_rank=2, n_sweeps=1, learning_rate=0.5, random_state=0).fit(X_tr[:400], y_tr[:400])
    assert len(seen) == 4  # 2 bonds, right then left
    for before, after, accepted, actual in seen:
        assert after == pytest.approx(actual, rel=1e-4)  # the carried loss is the network's
        assert after <= before * (1 + 1e-5)


def test_ard_learns_smaller_ranks_and_records_them(digits_split):
    X_tr, X_te, y_tr, y_te = digits_split
    clf = TTNetClassifier(max_rank=16, rank_prior="ard", rank_tol=0.05, n_sweeps=2, random_state=0)
    clf.fit(X_tr, y_tr, eval_set=(X_te, y_te))
    fixed = TTNetClassifier(max_rank=16, n_sweeps=2, random_state=0).fit(X_tr, y_tr)
    assert sum(clf.tt_.ranks) < sum(fixed.tt_.ranks)  # the prior cut slices the data did not hold up
    assert clf.compression_ > fixed.compression_
    assert clf.score(X_te, y_te) >= 0.95
    assert [r.tt_ranks for r in clf.history_][-1] == clf.tt_.ranks
    assert all(len(lam) == r for lam, r in zip(clf.rank_variances_, clf.tt_.ranks))
    losses = clf.history_.column("loss")
    assert losses[1] <= losses[0] * 1.01  # the prior cuts what the data do not need: the fit does not suffer
    assert clf.size_label == "TT-rank auto (<= 16)"
    with pytest.raises(ValueError, match="rank_prior"):
        TTNetClassifier(rank_prior="bayes").fit(X_tr, y_tr)
    with pytest.raises(ValueError, match="rank_tol"):
        TTNetClassifier(rank_prior="ard", rank_tol=1.5).fit(X_tr, y_tr)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # a short MLP training is enough here
def test_init_from_a_trained_mlp_is_that_network_before_the_sweeps(digits_split, monkeypatch):
    from sklearn.neural_network import MLPClassifier

    X_tr, X_te, y_tr, y_te = digits_split
    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=60, random_state=0).fit(X_tr, y_tr)
    # exact rank (no truncation) and no sweep: the TT-net is the MLP
    monkeypatch.setattr(TTNetClassifier, "_sweep_loop", lambda self, *a, **k: None)
    exact = TTNetClassifier(n_cores=3, in_shape=(4, 4, 4), hidden_shape=(4, 4, 4), max_rank=64, dtype="float64")
    exact.fit(X_tr, y_tr, init_from=mlp)
    np.testing.assert_allclose(exact.predict_proba(X_te), mlp.predict_proba(X_te), atol=1e-8)
    assert exact.history_.meta["init"] == "dense" and exact.history_.meta["compressed_relative_error"] < 1e-10
    # the tuple form is the same thing
    layers = (mlp.coefs_[0], mlp.intercepts_[0], mlp.coefs_[1], mlp.intercepts_[1])
    again = TTNetClassifier(n_cores=3, in_shape=(4, 4, 4), hidden_shape=(4, 4, 4), max_rank=64, dtype="float64")
    np.testing.assert_allclose(again.fit(X_tr, y_tr, init_from=layers).predict_proba(X_te),
                               mlp.predict_proba(X_te), atol=1e-8)
    monkeypatch.undo()
    # truncated to rank 2, then fine-tuned by sweeps: the sweeps win back accuracy
    tuned = TTNetClassifier(n_cores=3, hidden_shape=(4, 4, 4), max_rank=2, n_sweeps=1, random_state=0)
    tuned.fit(X_tr, y_tr, init_from=mlp, eval_set=(X_te, y_te))
    assert tuned.tt_.ranks == [2, 2] and tuned.score(X_te, y_te) >= 0.9


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_init_from_bad_networks(digits_split):
    from sklearn.neural_network import MLPClassifier

    X_tr, _, y_tr, _ = digits_split
    X, y = X_tr[:200], y_tr[:200]
    two = MLPClassifier(hidden_layer_sizes=(16, 16), max_iter=5).fit(X, y)
    with pytest.raises(ValueError, match="has 2 hidden layers"):
        TTNetClassifier().fit(X, y, init_from=two)
    tanh = MLPClassifier(hidden_layer_sizes=(16,), activation="tanh", max_iter=5).fit(X, y)
    with pytest.raises(ValueError, match="activation='tanh'"):
        TTNetClassifier().fit(X, y, init_from=tanh)
    one = MLPClassifier(hidden_layer_sizes=(48,), max_iter=5).fit(X, y)
    with pytest.raises(ValueError, match="48 units but hidden_shape=\\(4, 4, 4\\) holds 64"):
        TTNetClassifier(n_cores=3, hidden_shape=(4, 4, 4)).fit(X, y, init_from=one)
    with pytest.raises(ValueError, match="do not fit 64 features and 10 classes"):
        TTNetClassifier().fit(X, y, init_from=(np.zeros((60, 8)), np.zeros(8), np.zeros((8, 10)), np.zeros(10)))
    with pytest.raises(ValueError, match="a fitted MLPClassifier or a tuple"):
        TTNetClassifier().fit(X, y, init_from="mlp")
    with pytest.raises(ValueError, match="has 100 units: pass hidden_shape with 5 factors whose product is 100, "
                                         "e.g. hidden_shape=\\(5, 5, 2, 2, 1\\)"):
        TTNetClassifier().fit(X, y, init_from=MLPClassifier(hidden_layer_sizes=(100,), max_iter=5).fit(X, y))
    from sklearn.neural_network import MLPRegressor

    with pytest.raises(ValueError, match="init_from: MLPRegressor is not a classifier; pass a fitted MLPClassifier"):
        TTNetClassifier().fit(X, y, init_from=MLPRegressor(hidden_layer_sizes=(16,), max_iter=5).fit(X, y))
    with pytest.raises(ValueError, match="trained on classes .* fit it on the same labels"):
        TTNetClassifier().fit(X, (y + 1), init_from=MLPClassifier(hidden_layer_sizes=(16,), max_iter=5).fit(X, y))


@pytest.mark.parametrize("bad, says", [
    ((1, 2, 3), "got a tuple of 3 items"),
    ("mlp", "got str 'mlp'"),
    (3.5, "got float 3.5"),
])
def test_init_from_errors_say_what_was_given(digits_split, bad, says):
    X, _, y, _ = digits_split
    with pytest.raises(ValueError, match="must be a fitted MLPClassifier or a tuple") as info:
        TTNetClassifier(n_sweeps=1).fit(X, y, init_from=bad)
    assert says in str(info.value)


def test_init_from_an_unfitted_mlp_says_fit_it_first(digits_split):
    from sklearn.neural_network import MLPClassifier

    X, _, y, _ = digits_split
    with pytest.raises(ValueError, match=r"an unfitted MLPClassifier \(call its fit first\)"):
        TTNetClassifier(n_sweeps=1).fit(X, y, init_from=MLPClassifier())
