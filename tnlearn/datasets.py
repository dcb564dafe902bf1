"""Image data sets: IDX files, MNIST, Fashion-MNIST and scikit-learn's 8x8 digits.

Loaders return a :class:`Dataset` of float32 images (n, H, W) in [0, 1] and int64
labels (n,).  No global state; the only side effects are reading files and
downloading missing MNIST-style files into a cache directory.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["IDXFormatError", "DatasetUnavailableError", "ChecksumError", "Dataset",
           "MNIST_FILES", "read_idx", "write_idx", "load_mnist", "load_fashion_mnist", "load_cifar10",
           "read_cifar_batch", "CIFARFormatError", "dataset_key",
           "load_digits", "load_dataset", "avg_pool", "subsample", "train_val_split",
           "flatten_images"]


class IDXFormatError(ValueError):
    """A file is not a complete, well-formed IDX file."""


class DatasetUnavailableError(RuntimeError):
    """A data set is neither on disk nor downloadable (e.g. offline)."""


class ChecksumError(DatasetUnavailableError):
    """A downloaded file does not have the expected md5 checksum."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test image classification data set.

    Attributes
    ----------
    X_train : ndarray, shape (n_train, H, W) or (n_train, H, W, 3) for colour, float32 in [0, 1]
    y_train : ndarray, shape (n_train,), int64
    X_test : ndarray, shape (n_test, H, W) or (n_test, H, W, 3), float32 in [0, 1]
    y_test : ndarray, shape (n_test,), int64
    name : str, ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``
    image_shape : tuple of int, ``(H, W)`` or ``(H, W, 3)``
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    name: str
    image_shape: tuple

    def __repr__(self):  # shapes, not the arrays: a data set is tens of megabytes
        return (f"Dataset(name={self.name!r}, image_shape={tuple(self.image_shape)}, "
                f"n_train={len(self.y_train)}, n_test={len(self.y_test)}, "
                f"classes={np.unique(self.y_train).size}, dtype={self.X_train.dtype})")


# ----------------------------------------------------------------------------- IDX
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(t).newbyteorder("="): c for c, t in _IDX_TYPES.items()}
_FIX = "re-download it or point --data-dir (data_dir=) at a complete copy"


def _bad(path, problem: str) -> IDXFormatError:
    return IDXFormatError(f"{path}: {problem}; {_FIX}")


def read_idx(path) -> np.ndarray:
    """Read an IDX file (as used by MNIST), gzip-compressed or raw.

    Compression is detected from the gzip magic bytes ``1f 8b``, not the name.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    ndarray, shape given by the header, native byte order
        (uint8, int8, int16, int32, float32 or float64).

    Raises
    ------
    IDXFormatError
        Bad magic or type code, corrupt gzip, truncated data, trailing bytes.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise _bad(path, f"corrupt or truncated gzip stream ({exc})") from None
    if len(raw) < 4:
        raise _bad(path, f"file is {len(raw)} bytes, too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0:
        raise _bad(path, f"bad magic {raw[:4].hex()}: an IDX file starts with two zero bytes")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise _bad(path, f"unknown IDX type code 0x{code:02X} (known: "
                   + ", ".join(f"0x{c:02X}" for c in _IDX_TYPES) + ")")
    if ndim < 1:
        raise _bad(path, "header declares 0 dimensions")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise _bad(path, f"header truncated: {ndim} dimension sizes need {start} bytes, "
                   f"file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - start
    if found != expected:
        what = ("the file is truncated" if found < expected
                else f"{found - expected} trailing bytes after the data")
        raise _bad(path, f"expected {expected} data bytes for shape {shape} "
                   f"{dtype.newbyteorder('=').name}, found {found}: {what}")
    data = np.frombuffer(raw, dtype, offset=start).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path, array, compress=None) -> None:
    """Write ``array`` as an IDX file.

    Parameters
    ----------
    path : str or os.PathLike
    array : array_like, ndim >= 1
        dtype uint8, int8, int16, int32, float32 or float64.
    compress : bool or None
        Gzip the file; ``None`` means "if ``path`` ends with ``.gz``".
    """
    arr = np.asarray(array)
    code = _IDX_CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}; use one of "
                         "uint8, int8, int16, int32, float32, float64")
    if not 1 <= arr.ndim <= 255 or max(arr.shape) >= 2**32:
        raise ValueError(f"IDX cannot store an array of shape {arr.shape}")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(arr, arr.dtype.newbyteorder(">")).tobytes()
    if compress is None:
        compress = str(path).endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    Path(path).write_bytes(payload)


# ------------------------------------------------------------- MNIST-style sets
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_MD5 = dict(zip(MNIST_FILES, (
    "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
    "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")))
FASHION_MNIST_MD5 = dict(zip(MNIST_FILES, (
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
    "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")))
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/")
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
FASHION_MNIST_SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian dataset-fashion-mnist


def _urllib_fetch(url: str, timeout: float = 60.0) -> bytes:
    """Download ``url`` and return its bytes (default ``fetch``)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _locate(directory: Path, files=MNIST_FILES):
    """Paths of ``files`` in ``directory`` (``.gz`` or not), and the missing names."""
    found, missing = [], []
    for name in files:
        hit = next((p for p in (directory / name, directory / name[:-3]) if p.is_file()), None)
        (found if hit else missing).append(hit or name)
    return found, missing


def _unit_float(X):
    """Images as float32 in [0, 1]: integers divided by 255 (one pass, one allocation), floats cast."""
    if np.issubdtype(X.dtype, np.integer):  # the same float32 bits as astype, then / 255
        return np.divide(X, np.float32(255), dtype=np.float32)
    return X.astype(np.float32, copy=False)  # already float32 (digits, a float IDX file): no copy


def _assemble(name: str, paths, raw=False) -> Dataset:
    """Read and check the four IDX files; images -> float32 in [0, 1] (``raw``: as stored)."""
    arrays = [read_idx(p) for p in paths]
    for i in (0, 2):
        (img_path, lab_path), (X, y) = paths[i:i + 2], arrays[i:i + 2]
        if X.ndim != 3:
            raise _bad(img_path, f"images must be 3-D (n, H, W), got shape {X.shape}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise _bad(lab_path, f"labels must be 1-D integers, got {y.dtype} {y.shape}")
        if len(X) != len(y):
            raise _bad(lab_path, f"{len(y)} labels but {img_path} holds {len(X)} images")
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise _bad(paths[2], f"test image size {arrays[2].shape[1:]} differs from "
                   f"training image size {arrays[0].shape[1:]}")
    images = []
    for p, X in zip(paths[::2], arrays[::2]):
        lo, hi = (0, 255) if np.issubdtype(X.dtype, np.integer) else (0.0, 1.0)
        if X.dtype != np.uint8 and X.size and (X.min() < lo or X.max() > hi):  # uint8 cannot leave [0, 255]
            raise _bad(p, f"pixel values must lie in [{lo}, {hi}] for dtype {X.dtype}")
        images.append(X if raw else _unit_float(X))
    return Dataset(images[0], arrays[1].astype(np.int64), images[1],
                   arrays[3].astype(np.int64), name, tuple(arrays[0].shape[1:]))


def _unavailable(title, cache, missing, why, files=MNIST_FILES) -> DatasetUnavailableError:
    """The error for files neither on disk nor downloaded; lists each of the files once."""
    if len(missing) == len(files):
        listing = "\n".join(f"  {f}" for f in files)
    else:  # some are cached already: say which ones are still needed
        listing = "\n".join(f"  {f}{' (missing)' if f in missing else ' (already there)'}"
                            for f in files)
    these = "these four files" if len(files) == 4 else ("this file" if len(files) == 1 else "these files")
    return DatasetUnavailableError(
        f"{title} is not available: {why}.\nPut {these} in {cache}:\n"
        f"{listing}\nor pass data_dir=DIR (CLI: --data-dir DIR) naming a directory that "
        "holds them (uncompressed copies without .gz also work).")


def _new_directories(directory: Path):
    """``directory`` and those of its parents that do not exist yet, deepest first."""
    new = []
    for d in (directory, *directory.parents):
        if d.exists():
            break
        new.append(d)
    return new


def _download(title, cache: Path, missing, md5s, mirrors, fetch, files=MNIST_FILES) -> None:
    """Fetch each missing file into ``cache`` via temp file + md5 check + rename.

    When the download fails (offline, bad checksum, interrupted), the
    directories this call created are removed again if they are still empty,
    so a failed attempt leaves no empty cache directory behind.
    """
    created = _new_directories(cache)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        _fetch_all(title, cache, missing, md5s, mirrors, fetch, files)
    except BaseException:
        for d in created:  # deepest first; stops at one that holds a file fetched before the failure
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _fetch_all(title, cache: Path, missing, md5s, mirrors, fetch, files=MNIST_FILES) -> None:
    """The download loop of :func:`_download` (``cache`` exists)."""
    for fname in missing:
        errors, bad_sums = [], []
        for mirror in mirrors:
            url = mirror + fname
            try:
                content = fetch(url)
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{url}: {exc}")
                continue
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{fname}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(content)
                got = hashlib.md5(Path(tmp).read_bytes()).hexdigest()
                if got == md5s[fname]:
                    os.replace(tmp, cache / fname)
                    break
                bad_sums.append(f"{url}: md5 {got}, expected {md5s[fname]}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            if bad_sums:
                raise ChecksumError(
                    f"{title}: downloaded {fname} has the wrong checksum ("
                    + "; ".join(bad_sums) + "); nothing was saved. Retry later, or put "
                    f"a verified copy in {cache} or pass data_dir=DIR (--data-dir DIR).")
            tried = "\n".join(f"    {e}" for e in errors)
            raise _unavailable(title, cache, _locate(cache, files)[1],  # files fetched before this one are there
                               f"downloading {fname} failed from every mirror (offline?):\n{tried}", files)


def _load_mnist_like(name, title, md5s, mirrors, system_dirs, data_dir, cache_dir,
                     download, fetch, raw=False) -> Dataset:
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        paths, missing = _locate(directory)
        if missing:
            note = "" if directory.is_dir() else " (the directory does not exist)"
            raise FileNotFoundError(
                f"{title}: missing {', '.join(missing)} in {directory}{note}; data_dir "
                f"must hold the four files {', '.join(MNIST_FILES)} (with or without .gz).")
        return _assemble(name, paths, raw)
    if cache_dir is not None:
        cache = Path(cache_dir).expanduser()
    elif os.environ.get("TNLEARN_DATA"):
        cache = Path(os.environ["TNLEARN_DATA"]).expanduser() / name
    else:
        cache = Path("~/.cache/tnlearn").expanduser() / name
    for directory in (cache, *map(Path, system_dirs)):
        paths, missing = _locate(directory)
        if not missing:
            return _assemble(name, paths, raw)
    _, missing = _locate(cache)
    if not download:
        raise _unavailable(title, cache, missing, "it is not cached and download=False")
    _download(title, cache, missing, md5s, mirrors, fetch or _urllib_fetch)
    return _assemble(name, _locate(cache)[0], raw)


_LOADER_DOC = """Load {title} as a :class:`Dataset` of float32 images (n, 28, 28) in [0, 1].

    Lookup order: ``data_dir`` if given (the four :data:`MNIST_FILES`, ``.gz`` or
    uncompressed, checked structurally only, so subsets and home-made IDX files
    work); else the cache directory{system}; else download the missing files from
    the mirrors into the cache (md5-verified, atomically renamed).

    Parameters
    ----------
    data_dir : path, optional
        Directory holding the four files (missing ones: ``FileNotFoundError``).
    cache_dir : path, optional
        Cache directory for this data set.  Default ``$TNLEARN_DATA/{name}`` if
        the environment variable is set, else ``~/.cache/tnlearn/{name}``.
    download : bool
        Download missing files when nothing usable is on disk.
    fetch : callable ``url -> bytes``, optional
        Downloader (default: urllib); injectable for tests.
    raw : bool
        Keep the images as stored (uint8, 0-255) instead of float32 in [0, 1]:
        a quarter of the memory, for code that keeps a subset before converting.

    Returns
    -------
    Dataset
        Full set: X_train (60000, 28, 28), y_train (60000,), X_test (10000, 28, 28).

    Raises
    ------
    FileNotFoundError, IDXFormatError, DatasetUnavailableError, ChecksumError
    """


def load_mnist(data_dir=None, cache_dir=None, download=True, fetch=None, raw=False) -> Dataset:
    return _load_mnist_like("mnist", "MNIST", MNIST_MD5, MNIST_MIRRORS, (),
                            data_dir, cache_dir, download, fetch, raw)


def load_fashion_mnist(data_dir=None, cache_dir=None, download=True, fetch=None, raw=False) -> Dataset:
    return _load_mnist_like("fashion-mnist", "Fashion-MNIST", FASHION_MNIST_MD5,
                            FASHION_MNIST_MIRRORS, FASHION_MNIST_SYSTEM_DIRS,
                            data_dir, cache_dir, download, fetch, raw)


load_mnist.__doc__ = _LOADER_DOC.format(title="MNIST", name="mnist", system="")
load_fashion_mnist.__doc__ = _LOADER_DOC.format(
    title="Fashion-MNIST", name="fashion-mnist",
    system=", then ``/usr/share/datasets/fashion-mnist`` (Debian package "
           "``dataset-fashion-mnist``)")


def load_digits(test_size=0.25, random_state=0) -> Dataset:
    """Load scikit-learn's 1797 real 8x8 handwritten digits.

    Returns
    -------
    Dataset
        Images float32 (n, 8, 8) in [0, 1] (pixel / 16), labels int64,
        split by a stratified ``train_test_split(test_size, random_state)``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    X = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_size, random_state=random_state, stratify=y)
    return Dataset(X_tr, y_tr, X_te, y_te, "digits", (8, 8))


# ------------------------------------------------------------------ transforms
def avg_pool(images, factor=2) -> np.ndarray:
    """Average-pool non-overlapping ``factor x factor`` blocks.

    Parameters
    ----------
    images : array_like, shape (n, H, W) or (n, H, W, C) (colour: each channel pooled)
    factor : int >= 1, dividing both H and W

    Returns
    -------
    ndarray, shape (n, H // factor, W // factor) or (n, H // factor, W // factor, C)
        Same dtype as ``images`` if floating, else float64.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"avg_pool expects images of shape (n, H, W) or (n, H, W, C), got {images.shape}")
    factor = int(factor)
    n, H, W = images.shape[:3]
    if factor < 1 or H % factor or W % factor:
        raise ValueError(f"cannot pool images of shape {images.shape} by factor {factor}: "
                         "the factor must be >= 1 and divide both H and W")
    dtype = images.dtype if np.issubdtype(images.dtype, np.floating) else np.float64
    out = np.zeros((n, H // factor, W // factor) + images.shape[3:], dtype)
    for i in range(factor):  # strided sums: much faster than mean over a 5-D view
        for j in range(factor):
            out += images[:, i::factor, j::factor]
    out /= factor * factor
    return out


def _split_indices(y, size, random_state, stratify):
    """``train_test_split`` of the sample indices, ``size`` in the first part; stratified when feasible.

    The same parts as splitting the arrays themselves; only the rows asked for are copied afterwards.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    counts = np.unique(y, return_counts=True)[1]
    rest = len(y) - size
    ok = stratify and counts.min() >= 2 and min(size, rest) >= len(counts)
    return train_test_split(np.arange(len(y)), train_size=size, random_state=random_state,
                            stratify=y if ok else None)


def _split(X, y, size, random_state, stratify):
    """``train_test_split(X, y)`` with ``size`` samples in the first part; stratified when feasible."""
    first, second = _split_indices(y, size, random_state, stratify)
    X, y = np.asarray(X), np.asarray(y)
    return X[first], X[second], y[first], y[second]


def subsample(X, y, n, random_state=0, stratify=True):
    """Random subset of ``n`` samples (class-stratified when feasible).

    Parameters
    ----------
    X : ndarray, shape (N, ...)
    y : ndarray, shape (N,)
    n : int, 1 <= n <= N

    Returns
    -------
    X_sub : ndarray, shape (n, ...)
    y_sub : ndarray, shape (n,)
    """
    N = len(X)
    if len(y) != N:
        raise ValueError(f"X has {N} samples but y has {len(y)}")
    if not 1 <= n <= N:
        raise ValueError(f"cannot draw a subset of n={n} from {N} samples: ask for 1 to {N} "
                         "(load_dataset's n_train; on the command line --n-train)")
    if n == N:
        perm = np.random.default_rng(random_state).permutation(N)
        return np.asarray(X)[perm], np.asarray(y)[perm]
    keep = _split_indices(y, n, random_state, stratify)[0]  # the rest of X is not copied
    return np.asarray(X)[keep], np.asarray(y)[keep]


def train_val_split(X, y, val_fraction=0.1, random_state=0, stratify=True):
    """Split off a validation set (class-stratified when feasible).

    Parameters
    ----------
    X : ndarray, shape (N, ...)
    y : ndarray, shape (N,)
    val_fraction : float in (0, 1)

    Returns
    -------
    X_train, X_val, y_train, y_val : ndarrays with first dimensions
        ``N - n_val``, ``n_val``, ``N - n_val``, ``n_val``.
    """
    N = len(X)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * N))
    if not 1 <= n_val < N:
        raise ValueError(f"val_fraction={val_fraction} of {N} samples leaves an empty part")
    return _split(X, y, N - n_val, random_state, stratify)


# ----------------------------------------------------------------------------- CIFAR-10
#: The standard binary distribution (https://www.cs.toronto.edu/~kriz/cifar.html): six files of
#: 3,073-byte records (1 label byte, then 1,024 red, 1,024 green and 1,024 blue bytes, rows of 32).
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_MD5 = {CIFAR10_ARCHIVE: "c32a1d4ab5d03f1284b67883e8d87530"}
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32


class CIFARFormatError(ValueError):
    """A file is not a complete CIFAR-10 binary batch."""


def read_cifar_batch(data: bytes, where="CIFAR-10 batch"):
    """Images and labels of one CIFAR-10 binary batch (plain bytes: nothing is unpickled).

    Parameters
    ----------
    data : bytes
        The batch file's contents: records of 3,073 bytes.
    where : str
        The file's name, for messages.

    Returns
    -------
    images : ndarray, shape (n, 32, 32, 3), uint8
    labels : ndarray, shape (n,), int64, in 0..9

    Raises
    ------
    CIFARFormatError
        For a size that is not a whole number of records, or a label above 9.
    """
    if not data or len(data) % _CIFAR_RECORD:
        raise CIFARFormatError(f"{where}: {len(data)} bytes is not a whole number of {_CIFAR_RECORD}-byte "
                               f"records; {_FIX}")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise CIFARFormatError(f"{where}: label {int(labels.max())} is not a CIFAR-10 class (0..9); {_FIX}")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar_batches(directory: Path):
    """``{batch name: bytes}`` from the archive, its extracted folder, or loose batch files; None if absent."""
    import tarfile

    names = (*CIFAR10_TRAIN, CIFAR10_TEST)
    for archive in (directory / CIFAR10_ARCHIVE, directory / CIFAR10_ARCHIVE[:-3]):
        if archive.is_file():
            try:
                with tarfile.open(archive, "r:*") as tar:  # members are read as bytes, never extracted
                    members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                    absent = [n for n in names if n not in members]
                    if absent:
                        raise CIFARFormatError(f"{archive}: the archive lacks {', '.join(absent)}; {_FIX}")
                    return {n: tar.extractfile(members[n]).read() for n in names}
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise CIFARFormatError(f"{archive} is not a readable tar archive ({exc}); {_FIX}") from exc
    for folder in (directory / "cifar-10-batches-bin", directory):
        if all((folder / n).is_file() for n in names):
            return {n: (folder / n).read_bytes() for n in names}
    return None


def _assemble_cifar(batches, raw=False) -> Dataset:
    train = [read_cifar_batch(batches[n], n) for n in CIFAR10_TRAIN]
    X_test, y_test = read_cifar_batch(batches[CIFAR10_TEST], CIFAR10_TEST)
    X_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    if not raw:
        X_train, X_test = _unit_float(X_train), _unit_float(X_test)
    return Dataset(X_train, y_train, X_test, y_test, "cifar10", tuple(X_train.shape[1:]))


def load_cifar10(data_dir=None, cache_dir=None, download=True, fetch=None, raw=False) -> Dataset:
    """Load CIFAR-10 (Krizhevsky 2009) from its binary distribution, without pickle.

    Lookup order: ``data_dir`` if given (``cifar-10-binary.tar.gz``, the extracted
    ``cifar-10-batches-bin/`` folder, or the six ``.bin`` batch files); else the
    cache directory; else download :data:`CIFAR10_ARCHIVE` (162 MB, md5-verified,
    atomically renamed) into the cache.  The archive is read member by member
    with :mod:`tarfile` and never extracted.

    Parameters
    ----------
    data_dir, cache_dir, download, fetch, raw
        As :func:`load_mnist` (cache default ``$TNLEARN_DATA/cifar10`` or
        ``~/.cache/tnlearn/cifar10``; ``raw``: uint8 RGB as stored).

    Returns
    -------
    Dataset
        X_train (50000, 32, 32, 3), X_test (10000, 32, 32, 3): float32 RGB in
        [0, 1]; labels int64 in 0..9; ``image_shape`` (32, 32, 3).

    Raises
    ------
    FileNotFoundError, CIFARFormatError, DatasetUnavailableError, ChecksumError
    """
    title = "CIFAR-10"
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        batches = _cifar_batches(directory)
        if batches is None:
            note = "" if directory.is_dir() else " (the directory does not exist)"
            raise FileNotFoundError(
                f"{title}: {directory}{note} holds neither {CIFAR10_ARCHIVE} nor the batch files "
                f"{', '.join((*CIFAR10_TRAIN, CIFAR10_TEST))} (or their folder cifar-10-batches-bin)")
        return _assemble_cifar(batches, raw)
    if cache_dir is not None:
        cache = Path(cache_dir).expanduser()
    elif os.environ.get("TNLEARN_DATA"):
        cache = Path(os.environ["TNLEARN_DATA"]).expanduser() / "cifar10"
    else:
        cache = Path("~/.cache/tnlearn/cifar10").expanduser()
    batches = _cifar_batches(cache)
    if batches is not None:
        return _assemble_cifar(batches, raw)
    files = (CIFAR10_ARCHIVE,)
    if not download:
        raise _unavailable(title, cache, files, "it is not cached and download=False", files)
    _download(title, cache, files, CIFAR10_MD5, CIFAR10_MIRRORS, fetch or _urllib_fetch, files)
    return _assemble_cifar(_cifar_batches(cache), raw)


_NAMES = {"digits": "digits", "mnist": "mnist", "fashion-mnist": "fashion-mnist",
          "fashion_mnist": "fashion-mnist", "cifar10": "cifar10", "cifar-10": "cifar10"}


def dataset_key(name):
    """The canonical name of a data set (``"fashion_mnist"``, ``"Fashion-MNIST"`` -> ``"fashion-mnist"``), or None."""
    return _NAMES.get(str(name).lower())


def load_dataset(name, data_dir=None, pool=None, n_train=None, random_state=0,
                 download=True, cache_dir=None) -> Dataset:
    """Load a data set by name, pool its images and optionally subsample training.

    Parameters
    ----------
    name : {"digits", "mnist", "fashion-mnist", "fashion_mnist", "cifar10", "cifar-10"}
    data_dir, cache_dir, download
        Passed to :func:`load_mnist` / :func:`load_fashion_mnist` /
        :func:`load_cifar10` (ignored for digits).
    pool : int, optional
        Average-pooling factor; default 2 for (fashion-)MNIST (28 -> 14), 1 for
        digits and CIFAR-10.
    n_train : int, optional
        Size of a stratified random training subset.
    random_state : int
        Seed for the subset (and for the digits train/test split).

    Returns
    -------
    Dataset
        Images (n, H // pool, W // pool) float32 in [0, 1] (CIFAR-10: (n, 32 // pool,
        32 // pool, 3)), labels int64.
    """
    key = dataset_key(name)
    if key is None:
        raise ValueError(f"unknown data set {name!r}; accepted names: {', '.join(_NAMES)}")
    if key == "digits":
        ds = load_digits(random_state=random_state)
    else:
        loader = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}[key]
        # images stay uint8 until the subset is drawn
        ds = loader(data_dir=data_dir, cache_dir=cache_dir, download=download, raw=True)
    pool = (1 if key in ("digits", "cifar10") else 2) if pool is None else int(pool)
    X_tr, y_tr, X_te = ds.X_train, ds.y_train, ds.X_test
    if n_train is not None:  # the subset depends on the labels only: convert and pool just the images kept
        X_tr, y_tr = subsample(X_tr, y_tr, n_train, random_state)
    X_tr, X_te = _unit_float(X_tr), _unit_float(X_te)
    if pool != 1:
        X_tr, X_te = avg_pool(X_tr, pool), avg_pool(X_te, pool)
    return Dataset(X_tr, y_tr, X_te, ds.y_test, key, tuple(X_tr.shape[1:]))


def flatten_images(images, order="row") -> np.ndarray:
    """Flatten images to pixel sequences.

    Parameters
    ----------
    images : array_like, shape (n, H, W) or (n, H, W, C)
    order : {"row", "column", "zigzag"}
        The order of the pixels: ``"row"``: row-major; ``"column"``:
        column-major; ``"zigzag"``: boustrophedon, even rows left-to-right,
        odd rows right-to-left.  A colour pixel's ``C`` values stay together.

    Returns
    -------
    ndarray, shape (n, H * W) or (n, H * W * C)
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"flatten_images expects shape (n, H, W) or (n, H, W, C), got {images.shape}")
    if order == "row":
        grid = images
    elif order == "column":
        grid = images.transpose(0, 2, 1, *range(3, images.ndim))
    elif order == "zigzag":
        grid = images.copy()
        grid[:, 1::2] = grid[:, 1::2, ::-1]
    else:
        raise ValueError(f"unknown order {order!r}; use 'row', 'column' or 'zigzag'")
    return np.ascontiguousarray(grid).reshape(len(images), -1)
