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

Multi-stage models add their own entries: ``TTNetClassifier`` stores
``tt_core_0`` ... (``(r, n, m, r')``), ``b1``, ``V``, ``b2`` and ``input_mean``;
``ConvMPSClassifier`` stores the head as above plus ``conv_core_0`` ... (the
conv MPS, channel index on site ``conv_center``).

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


def save_model(model, path):
    """Save a fitted tnlearn estimator.

    Parameters
    ----------
    model : MPSClassifier, ConvMPSClassifier or TTNetClassifier
        Fitted, with a named (not callable) feature map.
    path : str or path-like
        Destination, conventionally ending in ``.npz``.
    """
    from tnlearn.networks import BOND_IND_ID, LABEL_IND, SITE_IND_ID, SITE_TAG_ID

    model._check_fitted()
    name = type(model).__name__
    if name == "TTNetClassifier":
        return _save_tt_net(model, path)
    params = _json_params(model)
    if not isinstance(params.get("feature_map"), str):
        raise ValueError(
            "only models with a named feature map (e.g. 'trig') can be saved: a callable cannot be "
            "stored without pickling code; save the cores yourself via model.mps_"
        )
    classes = np.asarray(model.classes_)
    if classes.dtype == object:
        raise ValueError("class labels must be numbers or strings to be saved (got objects)")
    head = model.head_
    header = _common_header(model, params)
    header.update({
        "n_sites": head.n_sites,
        "center": head.center,
        "log_norm": head.log_norm,
        "index_names": {
            "site_ind_id": SITE_IND_ID,
            "site_tag_id": SITE_TAG_ID,
            "bond_ind_id": BOND_IND_ID,
            "label": LABEL_IND,
        },
    })
    arrays = {"classes": classes}
    for i, core in enumerate(head.cores):
        arrays[f"core_{i}"] = head.backend.asnumpy(core)
    if name == "ConvMPSClassifier":
        conv = model.conv_
        header.update({
            "conv_n_sites": conv.net.n_sites, "conv_center": conv.net.center, "conv_log_norm": conv.net.log_norm,
            "conv_stride": conv.stride, "image_shape": list(conv.image_shape),
        })
        for i, core in enumerate(conv.net.cores):
            arrays[f"conv_core_{i}"] = conv.net.backend.asnumpy(core)
    arrays["header"] = _header_bytes(header)
    atomic_savez(path, arrays)


def _save_tt_net(model, path):
    be = model._backend
    classes = np.asarray(model.classes_)
    if classes.dtype == object:
        raise ValueError("class labels must be numbers or strings to be saved (got objects)")
    header = _common_header(model, _json_params(model))
    header.update({"n_tt_cores": model.tt_.n_cores, "input_scale": float(model.input_scale_)})
    arrays = {
        "header": _header_bytes(header), "classes": classes, "input_mean": np.asarray(model.input_mean_),
        "b1": be.asnumpy(model.b1_), "V": be.asnumpy(model.V_), "b2": be.asnumpy(model.b2_),
    }
    for i, core in enumerate(model.tt_.cores):
        arrays[f"tt_core_{i}"] = be.asnumpy(core)
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


def _check_classes(classes):
    if classes.ndim != 1 or len(classes) < 2 or classes.dtype.kind not in "biufUS":
        raise ValueError(f"classes must be a 1-D array of >= 2 numbers or strings, got {classes.dtype} {classes.shape}")
    if np.any(classes[1:] <= classes[:-1]):
        raise ValueError(f"classes must be sorted and unique (as np.unique gives), got {classes.tolist()}")


def _check_finite_floats(name, array, ndim):
    if array.dtype.kind != "f" or array.ndim != ndim:
        raise ValueError(f"{name} is {array.dtype} with {array.ndim} axes; expected real floats with {ndim}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has NaN or infinite values")


def _check_dtype(name, array, dtype):
    if array.dtype != dtype:
        raise ValueError(f"{name} is {array.dtype} but the model's dtype is {dtype}")


def _check_arrays(cores, classes, center, log_norm, n_features, model, d=None, n_labels=None, prefix="core"):
    """Structural checks of a loaded MPS (ValueError on the first inconsistency).

    ``n_features`` is the expected number of sites; ``d`` the physical
    dimension (default: the model's feature map); ``n_labels`` the size of the
    centre's extra index (default: the number of classes).
    """
    from tnlearn.embeddings import get_feature_map

    n_sites = len(cores)
    if n_sites < 2 or n_sites != n_features:
        raise ValueError(f"{n_sites} cores for n_features_in={n_features}")
    if not 0 <= center < n_sites:
        raise ValueError(f"centre site {center} is outside the chain of {n_sites} sites")
    if not np.isfinite(log_norm):
        raise ValueError(f"log_norm={log_norm} is not finite")
    _check_classes(classes)
    d = get_feature_map(model.feature_map).dim if d is None else d
    if n_labels is None:
        n_labels, what = len(classes), f"labels but there are {len(classes)} classes"
    else:
        what = f"channels but the model has {n_labels}"
    left = 1
    for i, core in enumerate(cores):
        want = 4 if i == center else 3
        if core.dtype.kind != "f" or core.ndim != want:
            raise ValueError(f"{prefix}_{i} is {core.dtype} with {core.ndim} axes; expected real floats with {want}")
        if core.shape[0] != left or core.shape[1] != d:
            raise ValueError(
                f"{prefix}_{i} has shape {core.shape}: its left bond must be {left} (the previous core's "
                f"right bond) and its physical dimension {d}"
            )
        if i == center and core.shape[2] != n_labels:
            raise ValueError(f"the centre core has {core.shape[2]} {what}")
        if not np.all(np.isfinite(core)):
            raise ValueError(f"{prefix}_{i} has NaN or infinite values")
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
    MPSClassifier, ConvMPSClassifier or TTNetClassifier
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
    if backend is not None:
        get_backend(backend)  # a bad override is the caller's error: raised before the file is read
    header, archive = _open(path)
    try:
        if backend is None:  # the saved backend, or numpy where it cannot run
            backend = _usable_backend(dict(header["params"]).get("backend", "numpy"))
        model_class = header.get("model_class")
        if model_class == "TTNetClassifier":
            return _load_tt_net(header, archive, backend)
        if model_class == "ConvMPSClassifier":
            return _load_conv_mps(header, archive, backend)
        if model_class != "MPSClassifier":
            raise ModelFormatError(
                f"{path}: unknown model class {model_class!r}; this tnlearn reads MPSClassifier, "
                "ConvMPSClassifier and TTNetClassifier"
            )
        params = _saved_params(header, backend)
        model = MPSClassifier(**params)
        model._check_params()
        n_sites = _header_int(header, "n_sites")
        n_features = _header_int(header, "n_features_in")
        center = _header_int(header, "center")
        log_norm = float(header["log_norm"])
        cores = [archive[f"core_{i}"] for i in range(n_sites)]
        classes = archive["classes"]
        _check_arrays(cores, classes, center, log_norm, n_features, model)
        head = MPSHead(cores, center, log_norm, get_backend(params["backend"]))
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


def _saved_params(header, backend, tuple_keys=()):
    """The estimator's hyperparameters from a header (JSON lists back to tuples), backend overridden."""
    params = dict(header["params"])
    if backend is not None:
        params["backend"] = backend
    for key in tuple_keys:
        if params.get(key) is not None:
            params[key] = tuple(params[key])
    return params


def _load_tt_net(header, archive, backend):
    from tnlearn.backend import get_backend
    from tnlearn.history import History
    from tnlearn.models.tt_net import TTNetClassifier
    from tnlearn.stages.tt import TTMatrix

    params = _saved_params(header, backend, tuple_keys=("in_shape", "hidden_shape"))
    model = TTNetClassifier(**params)
    model._check_params()
    n_features = _header_int(header, "n_features_in")
    n_cores = _header_int(header, "n_tt_cores")
    scale = float(header["input_scale"])
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"input_scale={scale} must be a positive finite number")
    classes = archive["classes"]
    _check_classes(classes)
    dtype = np.dtype(model.dtype)
    cores = [archive[f"tt_core_{i}"] for i in range(n_cores)]
    for i, core in enumerate(cores):
        _check_finite_floats(f"tt_core_{i}", core, 4)
        _check_dtype(f"tt_core_{i}", core, dtype)
    be = get_backend(params["backend"])
    tt = TTMatrix(cores, be)  # checks that the cores connect
    b1, V, b2, mean = archive["b1"], archive["V"], archive["b2"], archive["input_mean"]
    for name, array, ndim in (("b1", b1, 1), ("V", V, 2), ("b2", b2, 1), ("input_mean", mean, 1)):
        _check_finite_floats(name, array, ndim)
        if name != "input_mean":
            _check_dtype(name, array, dtype)
    H, L = tt.out_features, len(classes)
    if b1.shape != (H,) or V.shape != (H, L) or b2.shape != (L,) or mean.shape != (n_features,):
        raise ValueError(
            f"dense parameters of shapes b1 {b1.shape}, V {V.shape}, b2 {b2.shape}, input_mean {mean.shape} "
            f"do not fit a TT layer of {H} outputs, {L} classes and {n_features} features"
        )
    if tt.in_features < n_features:
        raise ValueError(f"the TT layer takes {tt.in_features} inputs, fewer than n_features_in={n_features}")
    for key, got in (("in_shape", tt.in_shape), ("hidden_shape", tt.out_shape)):
        if params.get(key) is not None and tuple(params[key]) != got:
            raise ValueError(f"the TT cores have {key} {got} but the saved parameters say {tuple(params[key])}")
    model._backend = be
    model.tt_, model.classes_, model.n_features_in_ = tt, classes, n_features
    model.b1_, model.V_, model.b2_ = be.asarray(b1), be.asarray(V), be.asarray(b2)
    model.input_mean_, model.input_scale_ = mean, scale
    model.history_ = History.from_json(header["history"])
    return model


def _load_conv_mps(header, archive, backend):
    from tnlearn.backend import get_backend
    from tnlearn.embeddings import get_feature_map
    from tnlearn.history import History
    from tnlearn.models.conv_mps import ConvMPSClassifier, _image_shape
    from tnlearn.stages.conv import ConvStage
    from tnlearn.stages.mps import MPSHead

    params = _saved_params(header, backend, tuple_keys=("image_shape",))
    model = ConvMPSClassifier(**params)
    n_features = _header_int(header, "n_features_in")
    model._check_params(n_features)
    image_shape = tuple(int(s) for s in header["image_shape"])
    stride = _header_int(header, "conv_stride")
    want_shape = _image_shape(n_features, params.get("image_shape"))
    if image_shape != want_shape:
        raise ValueError(f"image_shape {image_shape} disagrees with n_features_in={n_features} and the "
                         f"parameters ({want_shape})")
    if stride != (model.stride or model.patch):
        raise ValueError(f"conv_stride {stride} disagrees with the parameters (stride={model.stride}, "
                         f"patch={model.patch})")
    dtype = np.dtype(model.dtype)
    be = get_backend(params["backend"])
    classes = archive["classes"]
    d = get_feature_map(model.feature_map).dim
    conv_sites = _header_int(header, "conv_n_sites")
    conv_center = _header_int(header, "conv_center")
    conv_log = float(header["conv_log_norm"])
    conv_cores = [archive[f"conv_core_{i}"] for i in range(conv_sites)]
    _check_arrays(conv_cores, classes, conv_center, conv_log, model.patch**2, model, d=d,
                  n_labels=model.n_channels, prefix="conv_core")
    for i, core in enumerate(conv_cores):
        _check_dtype(f"conv_core_{i}", core, dtype)
    conv = ConvStage(MPSHead(conv_cores, conv_center, conv_log, be), model.patch, stride, image_shape,
                     model.feature_map)
    n_sites = _header_int(header, "n_sites")
    center = _header_int(header, "center")
    log_norm = float(header["log_norm"])
    cores = [archive[f"core_{i}"] for i in range(n_sites)]
    _check_arrays(cores, classes, center, log_norm, conv.n_patches, model, d=model.n_channels)
    for i, core in enumerate(cores):
        _check_dtype(f"core_{i}", core, dtype)
    model.conv_, model.head_ = conv, MPSHead(cores, center, log_norm, be)
    model.classes_, model.n_features_in_ = classes, n_features
    model.history_ = History.from_json(header["history"])
    return model
