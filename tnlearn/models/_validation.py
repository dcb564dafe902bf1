"""Input checks shared by the estimators: each error names the problem and the fix."""

from __future__ import annotations

import numpy as np


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
