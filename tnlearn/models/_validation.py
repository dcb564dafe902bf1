"""Input checks shared by the estimators: each error names the problem and the fix."""

from __future__ import annotations

import numpy as np
from sklearn.utils.multiclass import check_classification_targets


def check_features(X, n_features_in=None, min_features=1, what="X"):
    """A finite numeric 2-D array ``(n_samples, n_features)``.

    Parameters
    ----------
    X : array-like
    n_features_in : int, optional
        The fitted model's feature count (prediction time).
    min_features : int
    what : str
        Name used in messages.

    Returns
    -------
    ndarray, shape (n_samples, n_features)
    """
    X = np.asarray(X)
    if X.dtype == object or not np.issubdtype(X.dtype, np.number):
        raise TypeError(f"{what} must be numeric, got dtype {X.dtype}")
    if X.ndim != 2:
        hints = {1: " (one sample: X.reshape(1, -1))", 3: " (flatten images first: X.reshape(len(X), -1))"}
        raise ValueError(
            f"{what} must be 2-D with shape (n_samples, n_features), got shape {X.shape}{hints.get(X.ndim, '')}"
        )
    if X.shape[0] == 0:
        raise ValueError(f"{what} has no samples (shape {X.shape}); pass at least one")
    if X.shape[1] < min_features:
        raise ValueError(f"{what} has {X.shape[1]} features; this model needs at least {min_features}")
    if n_features_in is not None and X.shape[1] != n_features_in:
        raise ValueError(
            f"{what} has {X.shape[1]} features but the model was fitted with {n_features_in}; "
            "use the same image size and pooling as in training"
        )
    if not np.all(np.isfinite(X)):
        bad = int(np.count_nonzero(~np.isfinite(X)))
        raise ValueError(f"{what} contains {bad} NaN or infinite values; impute or drop those samples first")
    return X


def check_label_vector(X, y):
    """A 1-D vector of class labels as long as ``X`` (ndarray)."""
    y = np.asarray(y)
    if y.ndim != 1:
        hint = " (a column vector: pass y.ravel())" if y.ndim == 2 and y.shape[1] == 1 else ""
        raise ValueError(f"y must be 1-D with shape (n_samples,), got shape {y.shape}{hint}")
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} samples but y has {len(y)}; they must match")
    check_classification_targets(y)
    return y


def check_targets(X, y):
    """A 1-D label vector as long as ``X``, with at least two classes.

    Returns
    -------
    classes : ndarray
    y_idx : ndarray of int, shape (n_samples,)
    """
    y = check_label_vector(X, y)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"y has a single class ({classes[0]!r}); a classifier needs at least 2")
    return classes, np.searchsorted(classes, y)


def check_eval_set(eval_set, n_features):
    """``(X_test, y_test)`` of equal length with ``n_features`` columns."""
    if eval_set is None:
        return None
    if not (isinstance(eval_set, (tuple, list)) and len(eval_set) == 2):
        raise ValueError(f"eval_set must be a pair (X_test, y_test), got {type(eval_set).__name__}")
    X_test, y_test = eval_set
    if len(X_test) != len(y_test):
        raise ValueError(
            f"eval_set must be a pair (X_test, y_test) of the same length, got {len(X_test)} samples "
            f"and {len(y_test)} labels"
        )
    X_test = check_features(X_test, n_features, what="eval_set X_test")
    return X_test, np.asarray(y_test)


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def check_positive_float(name, value, example):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not value > 0:
        raise ValueError(f"{name}={value!r} must be a positive number, e.g. {example}")


DTYPES = ("float32", "float64")


def check_dtype(dtype):
    """``dtype`` names float32 or float64 (``"float32"``, ``np.float32`` or a ``np.dtype``)."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {DTYPES}")


def check_chunk_size(chunk_size):
    """Validate an estimator's ``chunk_size``.

    Raises
    ------
    ValueError
        Unless ``chunk_size`` is ``"auto"`` or an integer >= 1; the message
        names both choices.
    """
    if chunk_size == "auto":
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be 'auto' (the backend's default) or an integer >= 1")
