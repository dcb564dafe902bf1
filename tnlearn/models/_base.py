"""What every tnlearn classifier shares: the scikit-learn contract, input checks, scores, saving.

:class:`TNClassifier` is the base of :class:`~tnlearn.models.MPSClassifier`,
:class:`~tnlearn.models.ConvMPSClassifier` and
:class:`~tnlearn.models.TTNetClassifier`.  It owns

* input validation through scikit-learn's ``validate_data`` (dtype conversion
  of object arrays and pandas frames, ``feature_names_in_`` /
  ``n_features_in_``, clear errors for sparse, complex, empty, non-finite or
  mis-shaped input) and the label checks;
* ``check_is_fitted`` (an estimator is fitted once it has ``history_``);
* the scores: a model implements ``_scores(X) -> (n_samples, n_classes)``;
  ``decision_function`` returns them (for two classes, as scikit-learn
  expects, the ``(n_samples,)`` margin of ``classes_[1]``) and ``predict``
  their argmax, so the two always agree;
* the sweep loop every model runs (:meth:`TNClassifier._sweep_loop`):
  snapshot, one sweep, its record or a roll-back, the callback;
* the state a model file holds: a model implements ``_get_state()`` and
  ``_set_state(...)`` (its arrays and header fields) and :mod:`tnlearn.io`
  saves and loads any model through them, without knowing its class.
"""

from __future__ import annotations

import functools
import re
import types
from abc import ABCMeta, abstractmethod

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from tnlearn.embeddings import check_real_finite
from tnlearn.models._training import accuracy_fell

#: scikit-learn's input checks: float32 kept, anything else numeric converted to float64, no sparse;
#: NaN / inf are refused afterwards with the columns named (tnlearn.embeddings.check_real_finite)
_CHECKS = {"dtype": [np.float64, np.float32], "ensure_all_finite": False}
#: what to do, appended to scikit-learn's validation messages
_FIXES = [
    ("features as input", "use the same image size, pooling and columns as in training"),
    ("0 sample(s)", "pass at least one sample"),
    ("feature(s) (shape=", "the model needs at least that many features (one site per feature)"),
    ("inconsistent numbers of samples", "X and y need one row and one label per sample"),
    ("Feature names must be in the same order", "select the columns in the fitted order: X[clf.feature_names_in_]"),
    ("Feature names unseen at fit time", "pass the columns the model was fitted on: X[clf.feature_names_in_]"),
]

class _ExplainedAvailability:
    """A method that exists on an instance only when ``why_not(instance)`` is None.

    scikit-learn's ``available_if`` hides a method the same way (so ``hasattr`` and
    ``check_estimator`` see it absent), but its ``AttributeError`` reads "has no
    attribute"; here the error's message is ``why_not``'s: the reason and the fix.
    """

    def __init__(self, fn, why_not):
        self.fn, self.why_not = fn, why_not
        functools.update_wrapper(self, fn)

    def __get__(self, obj, owner=None):
        if obj is None:
            return self.fn
        reason = self.why_not(obj)
        if reason is not None:
            raise AttributeError(reason)
        return types.MethodType(self.fn, obj)


def available_unless(why_not):
    """Decorator: the method exists only where ``why_not(self)`` returns None, else ``AttributeError(why_not(self))``."""
    return lambda fn: _ExplainedAvailability(fn, why_not)



def _check_2d(X, what):
    """Short errors for complex, 1-D and N-D input (scikit-learn's own print the whole array)."""
    shape = getattr(X, "shape", None)
    if shape is None and isinstance(X, (list, tuple)):
        shape = np.shape(X) if len(X) and not isinstance(X[0], (list, tuple, np.ndarray)) else None
    if getattr(X, "dtype", None) is not None and np.iscomplexobj(X):
        check_real_finite(X, what)  # the complex-data error, with the fix
    if shape is None or len(shape) == 2:
        return
    hints = {
        0: "pass a 2-D array",
        1: "Reshape your data with X.reshape(1, -1) for one sample or X.reshape(-1, 1) for one feature",
    }
    hint = hints.get(len(shape), "flatten images first, X.reshape(len(X), -1)")
    raise ValueError(f"{what} must be 2-D with shape (n_samples, n_features), got shape {tuple(shape)}: {hint}")


class TNClassifier(ClassifierMixin, BaseEstimator, metaclass=ABCMeta):
    """Abstract base of the tnlearn classifiers (it cannot be instantiated).

    Subclasses implement ``fit``, and the abstract ``_scores`` (class scores of
    validated features), ``_get_state`` / ``_set_state`` (what a model file
    holds) and ``size_label`` (how the CLI names the model's size).
    """

    #: fewest features (columns of X) the model can be fitted on
    _min_features = 2
    #: the CLI may save the network of an interrupted sweep (consistent after every bond)
    saves_mid_sweep = False

    # -- scikit-learn contract ----------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        tags.input_tags.positive_only = self._positive_only()
        return tags

    def _positive_only(self):
        """Whether the model refuses negative features (its feature map's domain starts at 0)."""
        fmap = getattr(self, "feature_map", None)
        if fmap is None:
            return False
        from tnlearn.embeddings import get_feature_map

        try:
            domain = get_feature_map(fmap).domain
        except (TypeError, ValueError):  # an invalid feature_map: fit reports it
            return False
        return domain is not None and domain[0] >= 0

    def __sklearn_is_fitted__(self):
        return hasattr(self, "history_")

    def _validate_hyperparameters(self):
        """Check every hyperparameter against ``_parameter_constraints`` (scikit-learn's declarations).

        Raises
        ------
        sklearn.utils._param_validation.InvalidParameterError
            (a ``ValueError`` and a ``TypeError``) naming the parameter, what it
            must be and what it got, followed by the default as an example.
        """
        try:
            self._validate_params()
        except InvalidParameterError as exc:
            found = re.search(r"The '(\w+)' parameter", str(exc))
            if found is None:
                raise
            default = type(self)().get_params()[found.group(1)]
            raise InvalidParameterError(f"{exc} For example {found.group(1)}={default!r} (the default).") from None

    def _check_fitted(self):
        check_is_fitted(
            self,
            msg=f"this {type(self).__name__} is not fitted yet: call fit(X, y) first, or load a saved model "
                "with tnlearn.io.load_model",
        )

    # -- input ------------------------------------------------------------------------
    def _validate_X(self, X, *, reset, what="X"):
        """Features as a finite float array ``(n_samples, n_features)`` (float32 kept, else float64).

        ``reset=True`` (fit) records ``n_features_in_`` and, for a DataFrame,
        ``feature_names_in_``; ``reset=False`` checks ``X`` against them.
        """
        _check_2d(X, what)
        # after fit the feature count is checked against n_features_in_ (a clearer error than a minimum)
        least = self._min_features if reset else 1
        return self._checked(lambda: validate_data(self, X, reset=reset, **_CHECKS, ensure_min_features=least), what)

    @staticmethod
    def _checked(validate, what):
        """Run scikit-learn's validation, then the finiteness check; add the fix to its messages."""
        try:
            out = validate()
        except ValueError as exc:
            text = str(exc)
            for pattern, fix in _FIXES:
                if pattern in text:
                    raise type(exc)(f"{text.rstrip().rstrip('.')}; {fix}") from None
            raise
        check_real_finite(out[0] if isinstance(out, tuple) else out, what)
        return out

    def _validate_Xy(self, X, y):
        """Validated ``X`` and labels: ``(X, classes, y_idx)``, ``y_idx`` indexing ``classes`` (sorted).

        Raises
        ------
        ValueError
            For mismatched lengths, continuous targets or a single class.
        """
        _check_2d(X, "X")
        X, y = self._checked(lambda: validate_data(self, X, y, **_CHECKS, ensure_min_features=self._min_features), "X")
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"y has 1 class ({classes[0]}); a classifier needs at least 2")
        return X, classes, y_idx.reshape(-1)

    def _validate_eval_set(self, eval_set):
        """``eval_set=(X_test, y_test)`` checked against the fitted features; None stays None."""
        if eval_set is None:
            return None
        if not (isinstance(eval_set, (tuple, list)) and len(eval_set) == 2):
            raise ValueError(f"eval_set must be a pair (X_test, y_test), got {type(eval_set).__name__}")
        X_test, y_test = eval_set
        X_test = self._validate_X(X_test, reset=False, what="eval_set X_test")
        y_test = np.asarray(y_test).reshape(-1)
        if len(X_test) != len(y_test):
            raise ValueError(f"eval_set must be a pair (X_test, y_test) of the same length, got {len(X_test)} "
                             f"samples and {len(y_test)} labels")
        return X_test, y_test

    # -- scores -------------------------------------------------------------------------
    @abstractmethod
    def _scores(self, X):
        """Class scores of validated features, shape (n_samples, n_classes), float64."""

    def decision_function(self, X):
        """Class scores.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray, shape (n_samples, n_classes), float64
            The model's outputs per class (see the class docstring for which
            outputs); for two classes, shape ``(n_samples,)``: the score of
            ``classes_[1]`` minus that of ``classes_[0]`` (positive means
            ``classes_[1]``), as scikit-learn's metrics expect.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        """
        self._check_fitted()
        scores = self._scores(self._validate_X(X, reset=False))
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict(self, X):
        """The class with the largest score, shape (n_samples,)."""
        self._check_fitted()
        scores = self._scores(self._validate_X(X, reset=False))
        return self.classes_[np.argmax(scores, axis=1)]

    # -- the sweep loop -------------------------------------------------------------------
    def _note_training_data(self, X, y, continuing):
        """Which records the coming sweeps are guarded against: none of a fit on other samples.

        A continued fit (``warm_start``, ``tnlearn train --resume``) on the
        samples of the fit it continues guards its first sweep against that
        fit's last record, as an uninterrupted fit would; on other samples
        (another subset, new data, or a validation split drawn anew with
        ``early_stopping`` and ``random_state=None``) that record's loss and
        accuracy measure something else, so the new sweeps are guarded only
        against each other (each bond update is safeguarded either way).  The
        samples are told apart by a BLAKE2 digest of ``X`` and ``y``, kept with
        the index of the first record on them in ``history_.meta``
        (``"data_fingerprint"``, ``"data_first_record"``); a history without
        them, from an older model file, counts as the same samples.
        """
        import hashlib

        digest = hashlib.blake2b(digest_size=16)
        for a in (X, y):
            a = np.asarray(a)
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            rows = max(1, (1 << 22) // max(1, a[:1].nbytes))  # ~4 MiB at a time: no copy of a whole array
            for start in range(0, len(a), rows):
                digest.update(np.ascontiguousarray(a[start : start + rows]).reshape(-1).view(np.uint8))
        fingerprint = digest.hexdigest()
        meta = self.history_.meta
        if not (continuing and meta.get("data_fingerprint") in (None, fingerprint)):
            meta["data_first_record"] = len(self.history_)
        meta["data_fingerprint"] = fingerprint

    def _guarding_record(self):
        """The last record of a sweep on this fit's samples (what the next sweep is guarded against), or None."""
        if len(self.history_) > self.history_.meta.get("data_first_record", 0):
            return self.history_[-1]
        return None

    def _last_loss(self):
        """The recorded loss of the last kept sweep on this fit's samples (what the next one is guarded against), or None."""
        record = self._guarding_record()
        return None if record is None else record.loss

    def _lost_accuracy(self, number, train_accuracy, hint=""):
        """Whether sweep ``number`` cost more than a point of training accuracy; if so, says why.

        The reason goes to ``history_.meta["stopped"]``; the caller rolls the
        sweep back (see :func:`tnlearn.models._training.accuracy_fell`).
        """
        record = self._guarding_record()
        fell = accuracy_fell(None if record is None else record.train_accuracy, train_accuracy)
        if fell is None:
            return False
        self.history_.meta["stopped"] = (f"sweep {number} lowered the training loss but {fell}; kept the network "
                                         f"of sweep {number - 1}{hint}")
        return True


    def _sweep_loop(self, n_sweeps, one_sweep, snapshot, on_sweep=None, after_sweep=None):
        """Run up to ``n_sweeps`` safeguarded sweeps; the loop all models share.

        ``snapshot()`` returns a callable that restores the network as it was;
        ``one_sweep()`` runs a sweep and returns its record, already in
        ``history_``, or None when the sweep raised the loss (it is then
        rolled back and training ends).  ``after_sweep(record)`` (e.g. early
        stopping) returns True to end training after the callback
        ``on_sweep(self)``.
        """
        for _ in range(n_sweeps):
            restore = snapshot()
            record = one_sweep()
            if record is None:
                restore()
                break
            stop = after_sweep(record) if after_sweep is not None else False
            if on_sweep is not None:
                on_sweep(self)
            if stop:
                break

    # -- model files ----------------------------------------------------------------------
    @abstractmethod
    def _get_state(self):
        """``(header, arrays)``: JSON fields and named host arrays that rebuild the fitted model."""

    @abstractmethod
    def _set_state(self, header, arrays, backend):
        """Rebuild the fitted attributes from what :meth:`_get_state` gave (validated; ValueError if not)."""

    @property
    @abstractmethod
    def size_label(self):
        """The model's size in words for plots and logs, e.g. ``"m=16"``."""
