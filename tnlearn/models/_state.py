"""Checks of what a model file holds, shared by the models' ``_set_state``.

A loaded file is untrusted data: every header field and array is checked for
type, shape, dtype and finiteness before it becomes part of a model, and the
first inconsistency is a ``ValueError`` naming it (:func:`tnlearn.io.load_model`
turns it into a ``ModelFormatError``).
"""

from __future__ import annotations

import numpy as np


def header_int(header, key):
    """``header[key]`` as an int (a JSON integer, not a bool)."""
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"header field {key!r} must be an integer, got {value!r}")
    return value


def header_float(header, key):
    """``header[key]`` as a finite float."""
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"header field {key!r} must be a finite number, got {value!r}")
    return float(value)


def labels_for_saving(classes):
    """Class labels as an array a file can hold without pickling: numbers or strings.

    Labels from a pandas string (object) column are stored as strings.

    Raises
    ------
    ValueError
        For labels that are neither all numbers nor all strings.
    """
    classes = np.asarray(classes)
    if classes.dtype == object:
        if all(isinstance(c, str) for c in classes):
            return classes.astype(str)
        if all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes):
            return classes.astype(np.int64)
        kinds = sorted({type(c).__name__ for c in classes})
        raise ValueError(f"class labels must be all numbers or all strings to be saved, got {kinds}")
    return classes


def check_classes(classes):
    """1-D, at least two, numbers or strings, sorted and unique (as ``np.unique`` gives)."""
    if classes.ndim != 1 or len(classes) < 2 or classes.dtype.kind not in "biufUS":
        raise ValueError(f"classes must be a 1-D array of >= 2 numbers or strings, got {classes.dtype} {classes.shape}")
    if np.any(classes[1:] <= classes[:-1]):
        raise ValueError(f"classes must be sorted and unique (as np.unique gives), got {classes.tolist()}")


def check_finite_floats(name, array, ndim, dtype=None):
    """Real floats with ``ndim`` axes, all finite (and of ``dtype`` when given)."""
    if array.dtype.kind != "f" or array.ndim != ndim:
        raise ValueError(f"{name} is {array.dtype} with {array.ndim} axes; expected real floats with {ndim}")
    if dtype is not None and array.dtype != dtype:
        raise ValueError(f"{name} is {array.dtype} but the model's dtype is {dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has NaN or infinite values")


def check_mps_cores(cores, center, log_norm, n_sites, d, n_labels, prefix="core", dtype=None):
    """The cores of an MPS with an extra (label or channel) index on ``center``.

    Parameters
    ----------
    cores : list of ndarray
        ``(Dl, d, Dr)`` per site, ``(Dl, d, n_labels, Dr)`` on the centre.
    center : int
    log_norm : float
    n_sites : int
        Expected number of sites.
    d : int
        Physical dimension.
    n_labels : int
        Size of the centre's extra index.
    prefix : str
        Name of the cores in messages (``core``, ``conv_core``).
    dtype : numpy dtype, optional

    Raises
    ------
    ValueError
        On the first inconsistency.
    """
    if len(cores) < 2 or len(cores) != n_sites:
        raise ValueError(f"{len(cores)} {prefix}s for a chain of {n_sites} sites")
    if not 0 <= center < n_sites:
        raise ValueError(f"centre site {center} is outside the chain of {n_sites} sites")
    if not np.isfinite(log_norm):
        raise ValueError(f"log_norm={log_norm} is not finite")
    left = 1
    for i, core in enumerate(cores):
        name = f"{prefix}_{i}"
        check_finite_floats(name, core, 4 if i == center else 3, dtype)
        if core.shape[0] != left or core.shape[1] != d:
            raise ValueError(f"{name} has shape {core.shape}: its left bond must be {left} (the previous core's "
                             f"right bond) and its physical dimension {d}")
        if i == center and core.shape[2] != n_labels:
            raise ValueError(f"the centre {prefix} has {core.shape[2]} label values, expected {n_labels}")
        left = core.shape[-1]
    if left != 1:
        raise ValueError(f"the last {prefix}'s right bond is {left}, expected 1")
