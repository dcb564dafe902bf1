"""The TT-matrix (MPO) dense stage and the TT-net classifier."""

import math

import numpy as np
import pytest

from tnlearn.models.tt_net import TTNetClassifier
from tnlearn.stages.tt import TTMatrix, factorize, tt_from_dense
from tnlearn.truncation import Truncation

SHAPES = [((2, 3, 4), (3, 2, 2)), ((4, 4), (2, 5)), ((2, 2, 2, 2), (2, 2, 2, 2)), ((6,), (5,))]


@pytest.mark.parametrize("in_shape,out_shape", SHAPES)
def test_forward_equals_the_dense_matrix(in_shape, out_shape, rng):
    tt = TTMatrix.random(in_shape, out_shape, 3, rng, dtype=np.float64)
    W = tt.to_dense()
    assert W.shape == (math.prod(in_shape), math.prod(out_shape))
    # to_dense itself against an explicit sum over the TT index chain
    i = tuple(rng.integers(0, n) for n in in_shape)
    j = tuple(rng.integers(0, m) for m in out_shape)
    chain = np.ones((1, 1))
    for k, core in enumerate(tt.cores):
        chain = chain @ core[:, i[k], j[k], :]
    assert W[np.ravel_multi_index(i, in_shape), np.ravel_multi_index(j, out_shape)] == pytest.approx(chain[0, 0])
    X = rng.standard_normal((7, W.shape[0]))
    np.testing.assert_allclose(tt.forward(X), X @ W, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_shape,out_shape", SHAPES[:3])
def test_block_forward_and_gradient(in_shape, out_shape, rng):
    tt = TTMatrix.random(in_shape, out_shape, 3, rng, dtype=np.float64)
    X = rng.standard_normal((5, tt.in_features))
    dY = rng.standard_normal((5, tt.out_features))
    for j in range(tt.n_cores - 1):
        block = tt.merge(j)
        np.testing.assert_allclose(tt.block_forward(j, block, X), tt.forward(X), rtol=1e-12, atol=1e-12)
        grad = tt.block_gradient(j, X, dY)
        assert grad.shape == block.shape
        # the output is linear in the block: <grad, B> = sum(dY * Y(B)) for any B
        other = rng.standard_normal(block.shape)
        assert np.sum(grad * other) == pytest.approx(np.sum(dY * tt.block_forward(j, other, X)), rel=1e-10)


def test_quimb_mpo_is_the_same_operator(rng):
    tt = TTMatrix.random((2, 3, 4), (3, 2, 2), 3, rng, dtype=np.float64)
    mpo = tt.to_quimb()
    dense = mpo.contract(all).transpose(*[f"b{k}" for k in range(3)], *[f"k{k}" for k in range(3)]).data
    np.testing.assert_allclose(dense.reshape(24, 12), tt.to_dense(), atol=1e-13)
    assert mpo.L == 3 and mpo.max_bond() == max(tt.ranks)


def test_from_dense_round_trip_and_reported_error(rng):
    in_shape, out_shape = (4, 4, 4), (2, 4, 2)
    W = rng.standard_normal((64, 16))
    exact, info = tt_from_dense(W, in_shape, out_shape)
    assert info["relative_error"] < 1e-12
    np.testing.assert_allclose(exact.to_dense(), W, atol=1e-12)
    for max_bond in (1, 2, 4):
        tt, info = tt_from_dense(W, in_shape, out_shape, max_bond=max_bond)
        assert max(tt.ranks) <= max_bond
        actual = np.linalg.norm(tt.to_dense() - W) / np.linalg.norm(W)
        assert info["relative_error"] == pytest.approx(actual, rel=1e-9)
        assert actual <= info["error_bound"] + 1e-12
        assert info["n_params"] == tt.n_params == sum(c.size for c in tt.cores)
        assert info["compression"] == pytest.approx(64 * 16 / tt.n_params)
    # a matrix of TT-rank 2 is recovered exactly at max_bond=2
    low = TTMatrix.random(in_shape, out_shape, 2, rng, dtype=np.float64).to_dense()
    _, info = tt_from_dense(low, in_shape, out_shape, max_bond=2)
    assert info["relative_error"] < 1e-10


def test_split_respects_max_bond_and_reports_discarded_weight(rng):
    tt = TTMatrix.random((4, 4, 4), (4, 4, 4), 8, rng, dtype=np.float64)
    block = rng.standard_normal(tt.merge(1).shape)
    s = np.linalg.svd(block.reshape(np.prod(block.shape[:3]), -1), compute_uv=False)
    info = tt.split(1, block, "left", Truncation(max_bond=3))
    assert tt.ranks[1] == info.kept == 3
    assert info.discarded_weight == pytest.approx(np.sum(s[3:] ** 2) / np.sum(s**2))
    core = tt.cores[2]  # left split: the right core is right-orthonormal
    mat = core.reshape(core.shape[0], -1)
    np.testing.assert_allclose(mat @ mat.T, np.eye(3), atol=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda r: TTMatrix.random((2, 2), (2,), 2, r), "same number"),
        (lambda r: TTMatrix.random((2, 0), (2, 2), 2, r), "integer >= 1"),
        (lambda r: tt_from_dense(np.ones((4, 5)), (2, 2), (2, 2)), "needs \\(4, 4\\)"),
        (lambda r: tt_from_dense(np.full((4, 4), np.nan), (2, 2), (2, 2)), "NaN"),
        (lambda r: TTMatrix.random((2, 2), (2, 2), 2, r).forward(np.ones((3, 5))), "expected \\(n_samples, 4\\)"),
        (lambda r: TTMatrix.random((2, 2), (2, 2), 2, r).merge(1), "bond 1 does not exist"),
    ],
)
def test_bad_tt_input(call, match, rng):
    with pytest.raises(ValueError, match=match):
        call(rng)


def test_factorize_pads_to_powers_of_two():
    assert factorize(784, 5) == (4, 4, 4, 4, 4)
    assert factorize(64, 3) == (4, 4, 4)
    assert math.prod(factorize(100, 2)) >= 100


@pytest.fixture(scope="module")
def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


def test_tt_net_sweeps_lower_the_loss_and_learn_digits(digits_split):
    X_tr, X_te, y_tr, y_te = digits_split
    params = dict(n_cores=3, hidden_shape=(4, 8, 8), max_rank=2, random_state=0)
    clf = TTNetClassifier(n_sweeps=3, **params).fit(X_tr, y_tr, eval_set=(X_te, y_te))
    losses = clf.history_.column("loss")
    assert losses[0] < np.log(10) and losses[2] < losses[1] < losses[0]
    assert clf.history_[-1].test_accuracy == pytest.approx(clf.score(X_te, y_te))
    assert clf.score(X_te, y_te) >= 0.9
    assert max(clf.tt_.ranks) <= 2 and all(rec.max_truncation_error >= 0 for rec in clf.history_)
    # the trained TT layer is what the network uses
    Xp = clf._prepare(X_te, np)
    pre = Xp @ clf.tt_.to_dense() + clf.b1_
    logits = np.maximum(pre, 0) @ clf.V_ + clf.b2_
    np.testing.assert_allclose(clf.decision_function(X_te), logits, rtol=1e-4, atol=1e-4)
    # same seed, same result
    again = TTNetClassifier(n_sweeps=3, **params).fit(X_tr, y_tr)
    np.testing.assert_array_equal(again.predict(X_te), clf.predict(X_te))


def test_tt_net_bad_input(digits_split):
    X_tr, _, y_tr, _ = digits_split
    with pytest.raises(ValueError, match="in_shape=\\(4, 4\\) holds 16 features but X has 64"):
        TTNetClassifier(in_shape=(4, 4)).fit(X_tr, y_tr)
    with pytest.raises(ValueError, match="learning_rate"):
        TTNetClassifier(learning_rate=0).fit(X_tr, y_tr)
    with pytest.raises(ValueError, match="The 'max_rank' parameter of TTNetClassifier must be"):
        TTNetClassifier(max_rank=0).fit(X_tr, y_tr)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="call fit"):
        TTNetClassifier().predict(X_tr)


def test_tt_net_works_with_sklearn_tools(digits_split):
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X_tr, _, y_tr, _ = digits_split
    clf = TTNetClassifier(n_cores=3, max_rank=2, n_sweeps=2, epochs_per_bond=4.0, random_state=0)
    assert clone(clf).get_params() == clf.get_params()
    assert clf.set_params(max_rank=3).max_rank == 3
    pipe = make_pipeline(FunctionTransformer(lambda X: X * 2.0), clf)
    scores = cross_val_score(pipe, X_tr[:600], y_tr[:600], cv=3)
    assert scores.shape == (3,) and scores.min() > 0.6  # chance: 0.1


def test_review_fixes_tt(rng, digits_split):
    # integer matrices are compressed in floating point, not truncated to integers
    tt, info = tt_from_dense(np.arange(16).reshape(4, 4), (2, 2), (2, 2))
    assert tt.dtype == np.float64 and info["relative_error"] < 1e-12
    # every bond index is checked
    with pytest.raises(ValueError, match="bond 5 does not exist"):
        tt.block_forward(5, np.zeros((1, 2, 2, 2, 2, 1)), np.zeros((1, 4)))
    X_tr, _, y_tr, _ = digits_split
    with pytest.raises(ValueError, match="hidden_shape=\\(4, 4\\) has 2 factors but the input is factorised into 3"):
        TTNetClassifier(n_cores=3, hidden_shape=(4, 4)).fit(X_tr, y_tr)
    with pytest.raises(ValueError, match="The 'dtype' parameter of TTNetClassifier must be"):
        TTNetClassifier(dtype="foo").fit(X_tr, y_tr)


def test_minibatches_cover_every_sample_once_per_epoch(digits_split, monkeypatch):
    X_tr, _, y_tr, _ = digits_split
    X, y = X_tr[:300], y_tr[:300]
    seen = []
    clf = TTNetClassifier(n_cores=3, max_rank=2, n_sweeps=1, batch_size=128, epochs_per_bond=2.0, random_state=0)
    original = TTNetClassifier._batch_gradients

    def spy(self, Xb, yb, block, bond, params):
        if bond == 0 and len(seen) < 2 * 300 and sum(len(b) for b in seen) < 600:
            seen.append(np.asarray(Xb))
        return original(self, Xb, yb, block, bond, params)

    monkeypatch.setattr(TTNetClassifier, "_batch_gradients", spy)
    clf.fit(X, y)
    sizes = [len(b) for b in seen]
    assert sizes[:3] == [128, 128, 44]  # one epoch of 300 samples, the last batch short
    first_epoch = np.concatenate(seen[:3])
    assert len(np.unique(first_epoch.round(6), axis=0)) == len(np.unique(X.round(6), axis=0))


@pytest.mark.parametrize("scale", [1e-170, 1e150])
def test_tt_svd_is_scale_free(scale):
    """W * 1e-170 once gave ranks [1, 1] with a reported error of 0 (actual 0.99)."""
    W = np.random.default_rng(0).standard_normal((64, 64))
    ref, ref_info = tt_from_dense(W, (4, 4, 4), (4, 4, 4), max_bond=4)
    tt, info = tt_from_dense(W * scale, (4, 4, 4), (4, 4, 4), max_bond=4)
    assert tt.ranks == ref.ranks == [4, 4]
    assert info["relative_error"] == pytest.approx(ref_info["relative_error"], rel=1e-9)
    assert info["error_bound"] == pytest.approx(ref_info["error_bound"], rel=1e-9)
    np.testing.assert_allclose(tt.to_dense() / scale, ref.to_dense(), rtol=1e-9, atol=1e-12)
    exact, exact_info = tt_from_dense(W * scale, (4, 4, 4), (4, 4, 4))
    assert exact.ranks == [16, 16] and exact_info["relative_error"] < 1e-12
