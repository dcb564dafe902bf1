"""What every estimator's sweep loop shares: snapshots, the divergence guard, early stopping.

* :class:`HeadSnapshot` — the network as it was (cores are replaced, never
  written in place, by a split, so a snapshot is a list of references).
* :func:`divergence` — whether a sweep's training loss rose past the
  threshold (10%) or stopped being finite; the estimator then restores the
  snapshot taken before that sweep, warns with :class:`DivergenceWarning`
  and stops, so a diverged network is never the result of a fit.  A sweep
  that raised the loss by less is rolled back too, without a warning: the
  sweeps have converged (the fit's ``history_.meta["stopped"]`` says so).
* :func:`accuracy_fell` — a sweep that lowered the loss but lost more than
  one point of *training* accuracy is rolled back too, quietly (the loss the
  sweeps lower is a surrogate; when it stops tracking the classification, e.g.
  the squared loss through bonds narrower than the number of classes, more
  sweeps would only make the classifier worse).
* :class:`EarlyStopping` — scikit-learn's ``early_stopping`` /
  ``validation_fraction`` / ``n_iter_no_change`` / ``tol`` (as in
  ``MLPClassifier``): the validation accuracy after every sweep, the best
  sweep's network kept and restored at the end.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

#: A sweep whose mean training loss rises by more than this fraction has diverged: it is rolled back with a
#: DivergenceWarning.  (A smaller rise is rolled back too, quietly: the sweeps have converged.)
DIVERGENCE_RISE = 0.1


class DivergenceWarning(UserWarning):
    """A sweep made the training loss non-finite or raised it; the fit rolled it back and stopped."""


@dataclass
class HeadSnapshot:
    """The cores, centre and log norm of an :class:`~tnlearn.stages.mps.MPSHead` at one moment.

    Splits replace a head's cores by new arrays and never modify them in
    place, so holding the references is an exact copy at no cost.
    """

    cores: list
    center: int
    log_norm: float

    @classmethod
    def of(cls, head):
        return cls(list(head.cores), head.center, head.log_norm)

    def restore(self, head):
        """Put the snapshot back into ``head`` (same backend)."""
        head.assign(dict(enumerate(self.cores)), self.center, self.log_norm)

    def restore_into(self, head):
        """A callable that restores the snapshot into ``head`` (for the sweep loop's roll-back)."""
        return lambda: self.restore(head)


def divergence(before, after, rise=DIVERGENCE_RISE):
    """Why a sweep that moved the mean training loss from ``before`` to ``after`` must be undone, or None.

    Parameters
    ----------
    before : float or None
        Mean loss before the sweep (None: unknown, only finiteness is checked).
    after : float
    rise : float
        Largest tolerated relative increase.

    Returns
    -------
    str or None
    """
    if not np.isfinite(after):
        return f"the training loss became {after}"
    if before is not None and np.isfinite(before) and after > before * (1 + rise) + np.finfo(np.float64).tiny:
        return f"the training loss rose from {before:.6g} to {after:.6g} (more than {100 * rise:g}%)"
    return None


#: A sweep that lowered the loss but cost more than this much training accuracy (absolute) is rolled back:
#: the surrogate loss no longer tracks the classification (e.g. the squared loss with max_bond < n_classes).
ACCURACY_DROP = 0.01


def accuracy_fell(before, after, drop=ACCURACY_DROP):
    """Why a sweep that moved the training accuracy from ``before`` to ``after`` is not kept, or None."""
    if before is not None and after < before - drop:
        return f"its training accuracy fell from {before:.4f} to {after:.4f}"
    return None


#: What to try after a diverged sweep of a model trained by the MPS local solvers.
MPS_REMEDY = ("dtype='float64', truncation='data', step_size='auto' or a smaller step_size, precondition=False, "
              "a smaller max_bond, or alpha > 0")


def warn_diverged(model_name, sweep, reason, remedy=MPS_REMEDY):
    """Emit the :class:`DivergenceWarning` of a rolled-back sweep (names what happened and ``remedy``, what to try)."""
    warnings.warn(
        f"{model_name}: sweep {sweep} diverged ({reason}); the network was rolled back to the one "
        f"before that sweep and training stopped. Try {remedy}",
        DivergenceWarning,
        stacklevel=3,
    )


def validation_split(n_samples, y_idx, fraction, rng):
    """Indices ``(train, validation)`` of a stratified split, the validation part ``fraction`` of the samples.

    Stratified when every class has at least two samples (as scikit-learn's
    ``MLPClassifier`` does with ``early_stopping``); each class then keeps at
    least one training sample.

    Parameters
    ----------
    n_samples : int
    y_idx : ndarray, shape (n_samples,)
        Class index of every sample.
    fraction : float
        In (0, 1).
    rng : numpy.random.Generator

    Returns
    -------
    train, validation : ndarray of int
    """
    from sklearn.model_selection import train_test_split

    n_val = int(round(fraction * n_samples))
    n_classes = len(np.unique(y_idx))
    if n_val < 1 or n_samples - n_val < n_classes:
        raise ValueError(
            f"validation_fraction={fraction} leaves {n_val} of {n_samples} samples for validation and "
            f"{n_samples - n_val} for training ({n_classes} classes); use a fraction that leaves at least "
            "one validation sample and one training sample per class, or early_stopping=False"
        )
    counts = np.bincount(y_idx)
    stratify = y_idx if counts[counts > 0].min() >= 2 and n_val >= n_classes else None
    seed = int(rng.integers(2**31 - 1))
    train, val = train_test_split(np.arange(n_samples), test_size=n_val, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(val)


@dataclass
class EarlyStopping:
    """Track the validation score after each sweep; keep the best network.

    Parameters
    ----------
    n_iter_no_change : int
        Stop after this many sweeps without an improvement of more than ``tol``.
    tol : float

    Attributes
    ----------
    scores : list of float
        Validation accuracy after every sweep.
    best_score : float
    best : HeadSnapshot or None
    best_sweep : int
    """

    n_iter_no_change: int
    tol: float
    scores: list = field(default_factory=list)
    best_score: float = -np.inf
    best: HeadSnapshot = None
    best_sweep: int = 0
    _no_change: int = 0

    def update(self, score, head, sweep):
        """Record ``score`` after ``sweep``; True when training should stop."""
        self.scores.append(float(score))
        if score > self.best_score + self.tol:
            self.best_score, self.best, self.best_sweep = float(score), HeadSnapshot.of(head), sweep
            self._no_change = 0
        else:
            self._no_change += 1
        return self._no_change >= self.n_iter_no_change
