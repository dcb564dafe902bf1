"""Saving and loading trained models: a versioned ``.npz`` that never unpickles.

File layout (``numpy.savez`` archive, read back with ``allow_pickle=False``):

``header``
    UTF-8 JSON as a ``uint8`` array: ``format`` (``"tnlearn-model"``),
    ``format_version``, ``tnlearn_version``, ``model_class``, ``params``
    (the estimator's hyperparameters), ``n_features_in``, ``feature_names_in``
    (when fitted on a DataFrame), ``history`` and the model's own fields.
``classes``
    The class labels (numbers or strings; never objects).

The rest is the model's state, which the model itself describes
(``model._get_state()`` gives header fields and arrays, ``_set_state``
validates and restores them; this module never looks at a model's class):
``MPSClassifier`` stores ``core_0`` ... ``core_{N-1}``, the site tensors in the
engine's layout (``(Dl, d, Dr)``; ``(Dl, d, L, Dr)`` on the label site
``center``) and ``log_norm``; ``TTNetClassifier`` stores ``tt_core_0`` ...
(``(r, n, m, r')``), ``b1``, ``V``, ``b2`` and ``input_mean``;
``ConvMPSClassifier`` stores the head as the MPS classifier does plus
``conv_core_0`` ... (the conv MPS, channel index on site ``conv_center``).

Writes are atomic: the archive goes to a temporary file in the target
directory and is renamed over the destination, so a crash never leaves a
half-written model.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a model file is as readable as any other
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_value(value):
    """A hyperparameter as plain JSON data (numpy scalars and tuples included)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    return value


def _json_params(model):
    """The estimator's hyperparameters as JSON data.

    ``random_state`` given as a ``numpy.random.Generator`` (or ``RandomState``)
    cannot be stored as data: it is saved as ``None`` (the fitted weights do not
    depend on it; only a later ``warm_start`` continuation would).
    """
    params = model.get_params()
    params["dtype"] = np.dtype(params["dtype"]).name  # np.float32 -> "float32": JSON, not code
    params["backend"] = getattr(params["backend"], "name", params["backend"])  # a Backend object: its name
    if isinstance(params.get("random_state"), (np.random.Generator, np.random.RandomState)):
        params["random_state"] = None
    return {key: _json_value(value) for key, value in params.items()}


def _common_header(model, params):
    from tnlearn import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tnlearn_version": __version__,
        "model_class": type(model).__name__,
        "params": params,
        "n_features_in": int(model.n_features_in_),
        "history": model.history_.to_json(),
    }


def _umask():
    """The process's umask (read by setting it and putting it back: the OS offers no plain getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_model(model, path):
    """Save a fitted tnlearn estimator.

    Parameters
    ----------
    model : MPSClassifier, ConvMPSClassifier or TTNetClassifier
        Fitted, with a named (not callable) feature map.
    path : str or path-like
        Destination, conventionally ending in ``.npz``.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        For an unfitted model.
    ValueError
        For a callable feature map or class labels that are neither all
        numbers nor all strings (nothing is written).
    """
    from tnlearn.models._state import labels_for_saving

    model._check_fitted()
    params = _json_params(model)
    if "feature_map" in params and not isinstance(params["feature_map"], str):
        raise ValueError(
            "only models with a named feature map (e.g. 'trig') can be saved: a callable cannot be "
            "stored without pickling code; save the cores yourself via model.mps_"
        )
    header = _common_header(model, params)
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        header["feature_names_in"] = [str(name) for name in names]
    state, arrays = model._get_state()
    header.update(state)
    arrays = dict(arrays, classes=labels_for_saving(model.classes_), header=_header_bytes(header))
    atomic_savez(path, arrays)


def read_header(path):
    """The JSON header of a saved model, validated (no arrays are loaded)."""
    header, archive = _open(path)
    archive.close()
    return header


# what a damaged zip archive raises while it is opened or a member is read
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError)

# how to get a loadable file, for every "this is not a tnlearn model" error
_NOT_A_MODEL_FIX = (
    "tnlearn loads only the files tnlearn.io.save_model writes (as `tnlearn train --out` does): "
    "save the fitted model with tnlearn.io.save_model, or re-train it"
)


def _corrupt(path, exc):
    return ModelFormatError(
        f"{path} is not a readable tnlearn model file: the .npz archive is damaged "
        f"({type(exc).__name__}: {exc}); save the model again with tnlearn.io.save_model, or re-train it"
    )


def _not_a_model(path, why):
    """The error for a file that is not a tnlearn model: what it is instead, and how to get a model file."""
    return ModelFormatError(f"{path} is not a tnlearn model file: {why}; {_NOT_A_MODEL_FIX}")


def _starts_like_npy(path):
    """Whether the file begins with the ``.npy`` magic string (read from its first bytes only)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX
    except OSError:
        return False


def _open(path):
    """Open the archive and validate its header; the caller closes the archive."""
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):  # the path, not the file's content
        raise
    except ValueError as exc:
        # numpy refuses a pickle (or any file that is neither .npz nor .npy) and an object .npy array, and its
        # message then suggests allow_pickle=: wrong advice here, a model file never needs unpickling
        if _starts_like_npy(path):
            why = "it is a single .npy array, not an .npz archive"
        else:
            why = ("it is neither an .npz archive nor an .npy array (e.g. a pickle or a text file; "
                   "tnlearn reads models from .npz archives and never unpickles)")
        raise _not_a_model(path, why) from exc
    except _CORRUPT as exc:
        raise _corrupt(path, exc) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _not_a_model(path, "it is a single .npy array, not an .npz archive")
    try:
        return _check_header(path, archive), archive
    except BaseException:
        archive.close()
        raise


def _pickled_entries(archive):
    """Names of the archive's arrays that hold Python objects (pickled), read from their ``.npy`` headers only.

    Nothing is unpickled.  Entries that are not ``.npy`` arrays, or whose headers
    do not parse, are left to the reads that follow (which refuse them).
    """
    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    names = []
    for member in archive.zip.namelist():
        with archive.zip.open(member) as fh:
            try:
                version = fmt.read_magic(fh)
                if version not in readers:
                    continue
                dtype = readers[version](fh)[2]
            except ValueError:
                continue
        if dtype.hasobject:
            names.append(member.removesuffix(".npy"))
    return names


def _entry_list(names, limit=5):
    """``'a', 'b'`` (at most ``limit`` names, then a count of the others)."""
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_header(path, archive):
    if "header" not in archive.files:
        holds = f" (its entries: {_entry_list(archive.files)})" if archive.files else " (the archive is empty)"
        raise _not_a_model(path, f"it has no 'header' entry{holds}")
    try:
        pickled = _pickled_entries(archive)
    except _CORRUPT as exc:
        raise _corrupt(path, exc) from exc
    if pickled:
        what = "entry" if len(pickled) == 1 else "entries"
        raise _not_a_model(
            path,
            f"its {what} {_entry_list(pickled)} hold{'s' if len(pickled) == 1 else ''} Python objects "
            "(pickled data), which a tnlearn model never contains (models are loaded without unpickling)",
        )
    try:
        header = json.loads(bytes(archive["header"]).decode("utf-8"))
    except ValueError as exc:
        raise ModelFormatError(
            f"{path}: the header is not valid JSON text ({exc}); the file was damaged, or it is not a tnlearn "
            "model file: save the model again with tnlearn.io.save_model, or re-train it"
        ) from exc
    except _CORRUPT as exc:
        raise _corrupt(path, exc) from exc
    if not isinstance(header, dict):
        raise _not_a_model(path, f"its header is a JSON {type(header).__name__}, not an object")
    if header.get("format") != FORMAT:
        raise ModelFormatError(
            f"{path} is not a tnlearn model file (format {header.get('format')!r}); "
            f"{_NOT_A_MODEL_FIX}"
        )
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{path} has model format version {version!r}; this tnlearn reads version {FORMAT_VERSION}. "
            "Load it with the tnlearn version that wrote it "
            f"({header.get('tnlearn_version', 'unknown')}) or re-train"
        )
    return header


def load_model(path, backend=None):
    """Load a model saved by :func:`save_model`; never executes code from the file.

    Parameters
    ----------
    path : str or path-like
        A model file, or a run directory written by ``tnlearn train`` (its
        ``model.npz`` is loaded).
    backend : {"numpy", "cupy"}, optional
        Overrides the saved backend.

    Returns
    -------
    MPSClassifier, ConvMPSClassifier or TTNetClassifier
        Fitted, giving bit-identical predictions to the saved one.

    Raises
    ------
    FileNotFoundError
        When ``path`` (or a run directory's ``model.npz``) does not exist.
    ModelFormatError
        For a foreign, tampered or unsupported file: not an ``.npz`` archive
        (e.g. a pickle), no or an unreadable header, arrays of Python objects
        (refused, never unpickled), other format version, invalid
        hyperparameters, or arrays that do not form the saved model.  The
        message says what the file is and how to get a loadable one.
    """
    from tnlearn.backend import get_backend
    from tnlearn.history import History
    from tnlearn.models import ESTIMATORS
    from tnlearn.models._state import check_classes, header_int

    path = os.fspath(path)
    if os.path.isdir(path):  # a run directory
        model_path = os.path.join(path, "model.npz")
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"{path} is a directory without model.npz: pass a model file or the run "
                                    "directory `tnlearn train --out` wrote")
        path = model_path
    if backend is not None:
        get_backend(backend)  # a bad override is the caller's error: raised before the file is read
    header, archive = _open(path)
    try:
        if backend is None:  # the saved backend, or numpy where it cannot run
            backend = _usable_backend(dict(header["params"]).get("backend", "numpy"))
        model_class = header.get("model_class")
        if model_class not in ESTIMATORS:
            raise ModelFormatError(
                f"{path}: unknown model class {model_class!r}; this tnlearn reads {', '.join(sorted(ESTIMATORS))}"
            )
        params = dict(header["params"], backend=backend)
        model = ESTIMATORS[model_class](**params)
        classes = archive["classes"]
        check_classes(classes)
        model.classes_ = classes
        model.n_features_in_ = header_int(header, "n_features_in")
        if header.get("feature_names_in") is not None:
            names = np.asarray(header["feature_names_in"], dtype=object)
            if names.shape != (model.n_features_in_,) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"feature_names_in must list {model.n_features_in_} column names")
            model.feature_names_in_ = names
        model._set_state(header, archive, get_backend(backend))
        model.history_ = History.from_json(header["history"])
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
    return model


def _usable_backend(name):
    """The saved backend's name when this machine can run it, else ``"numpy"`` with a warning.

    A model trained on a GPU (``backend="cupy"``) must still load, evaluate and
    export on a machine without one: its arrays are saved as host data.
    """
    from tnlearn.backend import BackendUnavailableError, get_backend

    if name == "numpy":
        return name
    try:
        get_backend(name)
    except BackendUnavailableError as exc:
        warnings.warn(
            f"the model was trained with backend={name!r}, which this machine cannot run [{exc}]: "
            "it is loaded on backend='numpy' (same predictions); pass backend= to load_model to choose",
            stacklevel=3,
        )
        return "numpy"
    return name
