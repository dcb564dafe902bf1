"""Checkpoint and resume: a resumed run ends where an uninterrupted one does."""

import numpy as np

from tnlearn import MPSClassifier
from tnlearn.io import load_model, save_model


def _records(h):
    return [{k: v for k, v in vars(r).items() if k != "seconds"} for r in h.records]


def test_resumed_fit_equals_uninterrupted_fit(digits, tmp_path):
    X_train, X_test, y_train, y_test = digits
    X_train, y_train = X_train[:400], y_train[:400]
    kw = dict(max_bond=6, random_state=3)
    full = MPSClassifier(n_sweeps=3, **kw).fit(X_train, y_train, eval_set=(X_test, y_test))

    ckpt = tmp_path / "checkpoint.npz"
    saved = []
    MPSClassifier(n_sweeps=2, **kw).fit(
        X_train, y_train, eval_set=(X_test, y_test), on_sweep=lambda m: saved.append(save_model(m, ckpt))
    )
    assert len(saved) == 2
    resumed = load_model(ckpt)
    assert len(resumed.history_) == 2
    resumed.set_params(warm_start=True, n_sweeps=1)
    resumed.fit(X_train, y_train, eval_set=(X_test, y_test))

    assert _records(resumed.history_) == _records(full.history_)
    for a, b in zip(resumed.head_.cores, full.head_.cores):
        np.testing.assert_array_equal(a, b)
    assert resumed.head_.log_norm == full.head_.log_norm
    np.testing.assert_array_equal(resumed.decision_function(X_test), full.decision_function(X_test))
