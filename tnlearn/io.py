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
import zlib

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
    params["dtype"] = np.dtype(params["dtype"]).name  # np.float32 -> "float32": JSON, not code
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
    header, archive = _open(path)
    archive.close()
    return header


# what a damaged zip archive raises while it is opened or a member is read
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError)


def _corrupt(path, exc):
    return ModelFormatError(
        f"{path} is not a readable tnlearn model file: the .npz archive is damaged "
        f"({type(exc).__name__}: {exc}); save the model again with tnlearn.io.save_model, or re-train it"
    )


def _open(path):
    """Open the archive and validate its header; the caller closes the archive."""
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):  # the path, not the file's content
        raise
    except ValueError as exc:  # e.g. a pickle file, refused by allow_pickle=False
        raise ModelFormatError(f"{path} is not a tnlearn model file (.npz archive): {exc}") from exc
    except _CORRUPT as exc:
        raise _corrupt(path, exc) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelFormatError(f"{path} is not a tnlearn model file: it is a single .npy array, not an .npz archive")
    try:
        return _check_header(path, archive), archive
    except BaseException:
        archive.close()
        raise


def _check_header(path, archive):
    if "header" not in archive.files:
        raise ModelFormatError(f"{path} is not a tnlearn model file: it has no 'header' entry")
    try:
        header = json.loads(bytes(archive["header"]).decode("utf-8"))
    except ValueError as exc:  # includes numpy refusing an object (pickled) array
        raise ModelFormatError(f"{path}: the header is not valid JSON text ({exc})") from exc
    except _CORRUPT as exc:
        raise _corrupt(path, exc) from exc
    if not isinstance(header, dict):
        raise ModelFormatError(
            f"{path} is not a tnlearn model file: its header is a JSON {type(header).__name__}, not an object"
        )
    if header.get("format") != FORMAT:
        raise ModelFormatError(f"{path} is not a tnlearn model file (format {header.get('format')!r})")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{path} has model format version {version!r}; this tnlearn reads version {FORMAT_VERSION}. "
            "Load it with the tnlearn version that wrote it "
            f"({header.get('tnlearn_version', 'unknown')}) or re-train"
        )
    return header


def _header_int(header, key):
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"header field {key!r} must be an integer, got {value!r}")
    return value


def _check_arrays(cores, classes, center, log_norm, n_features, model):
    """Structural checks of a loaded model (ValueError on the first inconsistency)."""
    from tnlearn.embeddings import get_feature_map

    n_sites = len(cores)
    if n_sites < 2 or n_sites != n_features:
        raise ValueError(f"{n_sites} cores for n_features_in={n_features}")
    if not 0 <= center < n_sites:
        raise ValueError(f"centre site {center} is outside the chain of {n_sites} sites")
    if not np.isfinite(log_norm):
        raise ValueError(f"log_norm={log_norm} is not finite")
    if classes.ndim != 1 or len(classes) < 2 or classes.dtype.kind not in "biufUS":
        raise ValueError(f"classes must be a 1-D array of >= 2 numbers or strings, got {classes.dtype} {classes.shape}")
    if np.any(classes[1:] <= classes[:-1]):
        raise ValueError(f"classes must be sorted and unique (as np.unique gives), got {classes.tolist()}")
    d = get_feature_map(model.feature_map).dim
    left = 1
    for i, core in enumerate(cores):
        want = 4 if i == center else 3
        if core.dtype.kind != "f" or core.ndim != want:
            raise ValueError(f"core_{i} is {core.dtype} with {core.ndim} axes; expected real floats with {want}")
        if core.shape[0] != left or core.shape[1] != d:
            raise ValueError(
                f"core_{i} has shape {core.shape}: its left bond must be {left} (the previous core's "
                f"right bond) and its physical dimension {d} (feature map {model.feature_map!r})"
            )
        if i == center and core.shape[2] != len(classes):
            raise ValueError(f"the centre core has {core.shape[2]} labels but there are {len(classes)} classes")
        if not np.all(np.isfinite(core)):
            raise ValueError(f"core_{i} has NaN or infinite values")
        left = core.shape[-1]
    if left != 1:
        raise ValueError(f"the last core's right bond is {left}, expected 1")


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
        For a foreign, tampered or unsupported file: unreadable header, other
        format version, invalid hyperparameters, or cores that do not form a
        finite MPS matching ``n_features_in`` and ``classes``.
    """
    from tnlearn.backend import get_backend
    from tnlearn.history import History
    from tnlearn.models import MPSClassifier
    from tnlearn.stages.mps import MPSHead

    path = os.fspath(path)
    override = get_backend(backend) if backend is not None else None  # a bad override is the caller's error
    header, archive = _open(path)
    try:
        if header.get("model_class") != "MPSClassifier":
            raise ModelFormatError(f"{path}: unknown model class {header.get('model_class')!r}")
        params = dict(header["params"])
        if backend is not None:
            params["backend"] = backend
        model = MPSClassifier(**params)
        model._check_params()
        n_sites = _header_int(header, "n_sites")
        n_features = _header_int(header, "n_features_in")
        center = _header_int(header, "center")
        log_norm = float(header["log_norm"])
        cores = [archive[f"core_{i}"] for i in range(n_sites)]
        classes = archive["classes"]
        _check_arrays(cores, classes, center, log_norm, n_features, model)
        head = MPSHead(cores, center, log_norm, override or get_backend(params["backend"]))
        history = History.from_json(header["history"])
    except ModelFormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(
            f"{path}: the model file is incomplete or inconsistent ({exc}); it was damaged or edited "
            "after saving: save the model again with tnlearn.io.save_model, or re-train it"
        ) from exc
    except _CORRUPT as exc:
        raise _corrupt(path, exc) from exc
    finally:
        archive.close()
    model.head_ = head
    model.classes_ = classes
    model.n_features_in_ = n_features
    model.history_ = history
    return model
