"""Saving and loading trained models: a versioned ``.npz`` that never unpickles.

File layout (``numpy.savez`` archive, read back with ``allow_pickle=False``):

``header``
    UTF-8 JSON as a ``uint8`` array: ``format`` (``"tnlearn-model"``),
    ``format_version``, ``tnlearn_version``, ``model_class``, ``params``
    (the estimator's hyperparameters), ``n_features_in``, ``center`` (site of
    the label index), ``log_norm``, ``index_names`` and ``history``.
``classes``
    The class labels (numbers or strings; never objects).
``core_0`` ... ``core_{N-1}``
    Site tensors in the engine's layout (``(Dl, d, Dr)``; ``(Dl, d, L, Dr)`` on
    the centre).

Writes are atomic: the archive goes to a temporary file in the target
directory and is renamed over the destination, so a crash never leaves a
half-written model.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "tnlearn-model"
FORMAT_VERSION = 1


class ModelFormatError(ValueError):
    """A file that is not a tnlearn model of a supported format version."""


def _header_bytes(obj):
    return np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)


def atomic_savez(path, arrays):
    """Write ``arrays`` (dict of name -> array) as an ``.npz`` atomically."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(model, path):
    """Save a fitted :class:`~tnlearn.models.MPSClassifier`.

    Parameters
    ----------
    model : MPSClassifier
        Fitted, with a named (not callable) feature map.
    path : str or path-like
        Destination, conventionally ending in ``.npz``.
    """
    from tnlearn import __version__
    from tnlearn.networks import BOND_IND_ID, LABEL_IND, SITE_IND_ID, SITE_TAG_ID

    model._check_fitted()
    params = model.get_params()
    if not isinstance(params["feature_map"], str):
        raise ValueError(
            "only models with a named feature map (e.g. 'trig') can be saved: a callable cannot be "
            "stored without pickling code; save the cores yourself via model.mps_"
        )
    classes = np.asarray(model.classes_)
    if classes.dtype == object:
        raise ValueError("class labels must be numbers or strings to be saved (got objects)")
    head = model.head_
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tnlearn_version": __version__,
        "model_class": type(model).__name__,
        "params": params,
        "n_features_in": int(model.n_features_in_),
        "n_sites": head.n_sites,
        "center": head.center,
        "log_norm": head.log_norm,
        "index_names": {
            "site_ind_id": SITE_IND_ID,
            "site_tag_id": SITE_TAG_ID,
            "bond_ind_id": BOND_IND_ID,
            "label": LABEL_IND,
        },
        "history": model.history_.to_json(),
    }
    arrays = {"header": _header_bytes(header), "classes": classes}
    for i, core in enumerate(head.cores):
        arrays[f"core_{i}"] = head.backend.asnumpy(core)
    atomic_savez(path, arrays)


def read_header(path):
    """The JSON header of a saved model, validated (no arrays are loaded)."""
    header, _ = _open(path)
    return header


def _open(path):
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelFormatError(f"{path} is not a tnlearn model file (.npz archive): {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile) or "header" not in archive.files:
        raise ModelFormatError(f"{path} is not a tnlearn model file: it has no 'header' entry")
    try:
        header = json.loads(bytes(archive["header"]).decode("utf-8"))
    except ValueError as exc:  # includes numpy refusing an object (pickled) array
        raise ModelFormatError(f"{path}: the header is not valid JSON text ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFormatError(f"{path} is not a tnlearn model file (format {header.get('format')!r})")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{path} has model format version {version!r}; this tnlearn reads version {FORMAT_VERSION}. "
            "Load it with the tnlearn version that wrote it "
            f"({header.get('tnlearn_version', 'unknown')}) or re-train"
        )
    return header, archive


def load_model(path, backend=None):
    """Load a model saved by :func:`save_model`; never executes code from the file.

    Parameters
    ----------
    path : str or path-like
    backend : {"numpy", "cupy"}, optional
        Overrides the saved backend.

    Returns
    -------
    MPSClassifier
        Fitted, giving bit-identical predictions to the saved one.

    Raises
    ------
    ModelFormatError
        For a foreign, tampered or unsupported file.
    """
    from tnlearn.backend import get_backend
    from tnlearn.history import History
    from tnlearn.models import MPSClassifier
    from tnlearn.stages.mps import MPSHead

    header, archive = _open(path)
    if header.get("model_class") != "MPSClassifier":
        raise ModelFormatError(f"{path}: unknown model class {header.get('model_class')!r}")
    try:
        params = dict(header["params"])
        if backend is not None:
            params["backend"] = backend
        model = MPSClassifier(**params)
        cores = [archive[f"core_{i}"] for i in range(int(header["n_sites"]))]
        classes = archive["classes"]
        head = MPSHead(cores, int(header["center"]), float(header["log_norm"]), get_backend(params["backend"]))
        history = History.from_json(header["history"])
        n_features = int(header["n_features_in"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{path}: the model file is incomplete or inconsistent ({exc!r})") from exc
    if head.n_sites != n_features or head.n_labels != len(classes):
        raise ModelFormatError(f"{path}: cores do not match n_features_in / classes; the file is corrupt")
    model.head_ = head
    model.classes_ = classes
    model.n_features_in_ = n_features
    model.history_ = history
    return model
