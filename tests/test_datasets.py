"""Tests for tnlearn.datasets (no network: downloads go through a fake ``fetch``)."""

import gzip
import hashlib
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, HealthCheck, strategies as st
from hypothesis.extra import numpy as hnp

from tnlearn import datasets as D
from tnlearn.datasets import (
    MNIST_FILES, ChecksumError, Dataset, DatasetUnavailableError, IDXFormatError,
    avg_pool, flatten_images, load_dataset, load_digits, load_fashion_mnist, load_mnist,
    read_idx, subsample, train_val_split, write_idx)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array, compress=False, tmp_path=None):
    """Bytes of ``array`` written as IDX, via a scratch file."""
    p = Path(tmp_path) / ("x.idx.gz" if compress else "x.idx")
    write_idx(p, array)
    data = p.read_bytes()
    p.unlink()
    return data


# ------------------------------------------------------------------ read/write
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32,
                                   np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["idx", "idx.gz"])
def test_roundtrip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    arr = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a.{suffix}"
    write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_header_layout_is_big_endian(tmp_path):
    path = tmp_path / "a.idx"
    write_idx(path, np.array([1, 258], dtype=np.int16))
    assert path.read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 2])
    np.testing.assert_array_equal(read_idx(path), [1, 258])


def test_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_named_plain, plain_named_gz = tmp_path / "a.gz", tmp_path / "b.idx"
    write_idx(gz_named_plain, arr, compress=False)
    write_idx(plain_named_gz, arr, compress=True)
    assert gz_named_plain.read_bytes()[:2] == b"\x00\x00"
    assert plain_named_gz.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(gz_named_plain), arr)
    np.testing.assert_array_equal(read_idx(plain_named_gz), arr)


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        write_idx(tmp_path / "a.idx", np.zeros(3, dtype=np.int64))


def _valid(tmp_path):
    return idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), tmp_path=tmp_path)


@pytest.mark.parametrize("mutate, pattern", [
    (lambda b: b"\x01" + b[1:], "magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "type code 0x07"),
    (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
    (lambda b: b[:-1], r"expected 24 data bytes for shape \(2, 3, 4\) uint8, found 23: "
                       "the file is truncated"),
    (lambda b: b + b"\x00\x00\x00", "found 27: 3 trailing bytes"),
    (lambda b: b[:10], "header truncated"),
    (lambda b: b[:3], "too short"),
    (lambda b: gzip.compress(b)[:-6], "gzip"),
    (lambda b: (lambda z: z[:12] + bytes(x ^ 0xFF for x in z[12:20]) + z[20:])(
        gzip.compress(b)), "gzip"),
    (lambda b: gzip.compress(b + b"\x00"), "1 trailing bytes"),
])
def test_rejects_malformed(tmp_path, mutate, pattern):
    path = tmp_path / "bad-file.idx"
    path.write_bytes(mutate(_valid(tmp_path)))
    with pytest.raises(IDXFormatError, match=pattern) as info:
        read_idx(path)
    msg = str(info.value)
    assert str(path) in msg and "re-download" in msg and "--data-dir" in msg
    assert isinstance(info.value, ValueError)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6)),
       compress=st.booleans(), data=st.data())
def test_property_roundtrip_and_truncation(tmp_path, arr, compress, data):
    path = tmp_path / "p.idx"
    write_idx(path, arr, compress=compress)
    blob = path.read_bytes()
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)
    cut = data.draw(st.integers(0, len(blob) - 1), label="cut")
    path.write_bytes(blob[:cut])
    with pytest.raises(IDXFormatError):
        read_idx(path)


# ------------------------------------------------------------ MNIST-style loaders
def make_mnist_dir(directory, n_train=20, n_test=10, gz=True, seed=0):
    """Write tiny MNIST-format files; returns the raw arrays."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n_train).astype(np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n_test).astype(np.uint8)]
    arrays[0][0, 0, 0], arrays[0][0, 0, 1] = 0, 255
    for name, arr in zip(MNIST_FILES, arrays):
        write_idx(directory / (name if gz else name[:-3]), arr)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_data_dir(tmp_path, gz):
    raw = make_mnist_dir(tmp_path / "d", gz=gz)
    ds = load_mnist(data_dir=tmp_path / "d", download=False)
    assert isinstance(ds, Dataset) and ds.name == "mnist" and ds.image_shape == (28, 28)
    assert ds.X_train.shape == (20, 28, 28) and ds.X_test.shape == (10, 28, 28)
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0
    np.testing.assert_allclose(ds.X_test, raw[2] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, raw[1])
    np.testing.assert_array_equal(ds.y_test, raw[3])


def test_raw_images_and_the_subset_converted_after(tmp_path):
    """raw=True keeps the stored uint8; load_dataset converts only the subset, to the same bits as before."""
    from tnlearn.datasets import avg_pool, load_dataset

    raw = make_mnist_dir(tmp_path / "d", n_train=40)
    ds_raw = load_mnist(data_dir=tmp_path / "d", download=False, raw=True)
    assert ds_raw.X_train.dtype == np.uint8
    np.testing.assert_array_equal(ds_raw.X_train, raw[0])
    full = load_mnist(data_dir=tmp_path / "d", download=False)
    assert np.array_equal(full.X_train, raw[0].astype(np.float32) / np.float32(255))  # bit for bit
    sub = load_dataset("mnist", data_dir=tmp_path / "d", n_train=20, random_state=3)
    expected, y_expected = subsample(avg_pool(full.X_train, 2), full.y_train, 20, 3)
    assert sub.X_train.dtype == np.float32
    assert np.array_equal(sub.X_train, expected) and np.array_equal(sub.y_train, y_expected)
    assert np.array_equal(sub.X_test, avg_pool(full.X_test, 2))


def test_data_dir_missing_file(tmp_path):
    make_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(data_dir=tmp_path)
    msg = str(info.value)
    assert "missing t10k-labels-idx1-ubyte.gz in" in msg and str(tmp_path) in msg
    assert "missing train-images" not in msg
    assert all(name in msg for name in MNIST_FILES)


def test_data_dir_count_mismatch(tmp_path):
    make_mnist_dir(tmp_path)
    write_idx(tmp_path / MNIST_FILES[1], np.zeros(19, dtype=np.uint8))
    with pytest.raises(IDXFormatError, match="19 labels but .* 20 images"):
        load_mnist(data_dir=tmp_path)


def test_data_dir_images_must_be_3d(tmp_path):
    make_mnist_dir(tmp_path)
    write_idx(tmp_path / MNIST_FILES[0], np.zeros((20, 784), dtype=np.uint8))
    with pytest.raises(IDXFormatError, match="3-D"):
        load_mnist(data_dir=tmp_path)


def _fake_content(tmp_path):
    """Distinct valid IDX bytes for each of the four file names."""
    scratch = tmp_path / "scratch"
    arrays = make_mnist_dir(scratch, gz=True, seed=1)
    return {n: (scratch / n).read_bytes() for n in MNIST_FILES}, arrays


def test_offline_raises_unavailable(tmp_path):
    calls = []

    def offline(url):
        calls.append(url)
        raise urllib.error.URLError("no network")

    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError) as info:
        load_mnist(cache_dir=cache, fetch=offline)
    assert not isinstance(info.value, ChecksumError)
    msg = str(info.value)
    assert all(name in msg for name in MNIST_FILES)
    assert str(cache) in msg and "data_dir=" in msg and "--data-dir" in msg
    assert all(m in msg for m in D.MNIST_MIRRORS)
    assert calls == [m + MNIST_FILES[0] for m in D.MNIST_MIRRORS]
    assert not cache.exists()  # the directory created for the download is removed again


def _offline(url):
    raise urllib.error.URLError("no network")


def test_offline_lists_each_file_once_and_leaves_no_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_urllib_fetch", _offline)  # the default downloader, with no network
    monkeypatch.setenv("TNLEARN_DATA", str(tmp_path / "data"))
    with pytest.raises(DatasetUnavailableError) as info:
        load_mnist()
    msg = str(info.value)
    listing = msg[msg.index("Put these four files in"):]
    assert str(tmp_path / "data" / "mnist") in listing
    assert [listing.count(name) for name in MNIST_FILES] == [1, 1, 1, 1]
    assert "(missing" not in msg  # all four are missing: a plain list, no marks
    assert list(tmp_path.iterdir()) == []  # neither the cache directory nor its parent is left behind


def test_not_cached_without_download_lists_each_file_once(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailableError, match="download=False") as info:
        load_mnist(cache_dir=cache, download=False, fetch=pytest.fail)
    msg = str(info.value)
    assert [msg.count(name) for name in MNIST_FILES] == [1, 1, 1, 1]
    assert not cache.exists()


def test_offline_keeps_files_already_there(tmp_path, monkeypatch):
    content, _ = _fake_content(tmp_path)
    for name, blob in content.items():
        monkeypatch.setitem(D.MNIST_MD5, name, hashlib.md5(blob).hexdigest())
    cache = tmp_path / "new" / "cache"

    def first_file_only(url):  # the connection drops after the first file
        name = url.rsplit("/", 1)[1]
        if name != MNIST_FILES[0]:
            _offline(url)
        return content[name]

    with pytest.raises(DatasetUnavailableError) as info:
        load_mnist(cache_dir=cache, fetch=first_file_only)
    listing = str(info.value).split("Put these four files in", 1)[1]
    assert f"{MNIST_FILES[0]} (already there)" in listing
    assert all(f"{name} (missing)" in listing for name in MNIST_FILES[1:])
    assert [listing.count(name) for name in MNIST_FILES] == [1, 1, 1, 1]
    assert [p.name for p in cache.iterdir()] == [MNIST_FILES[0]]  # the downloaded file is kept


def test_download_disabled(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        load_mnist(cache_dir=tmp_path, download=False, fetch=pytest.fail)


def test_checksum_mismatch_leaves_nothing(tmp_path):
    content, _ = _fake_content(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz.*md5") as info:
        load_mnist(cache_dir=cache, fetch=lambda url: content[url.rsplit("/", 1)[1]])
    assert D.MNIST_MD5[MNIST_FILES[0]] in str(info.value)
    assert not cache.exists()  # no file, and no empty directory either


def test_download_verified_and_cached(tmp_path, monkeypatch):
    content, arrays = _fake_content(tmp_path)
    for name, blob in content.items():
        monkeypatch.setitem(D.MNIST_MD5, name, hashlib.md5(blob).hexdigest())
    monkeypatch.setenv("TNLEARN_DATA", str(tmp_path / "root"))
    calls = []

    def fetch(url):  # first mirror serves garbage for one file, second is good
        calls.append(url)
        name = url.rsplit("/", 1)[1]
        if url.startswith(D.MNIST_MIRRORS[0]) and name == MNIST_FILES[2]:
            return b"garbage"
        return content[name]

    ds = load_mnist(fetch=fetch)
    cache = tmp_path / "root" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(MNIST_FILES)
    assert len(calls) == 5
    np.testing.assert_array_equal(ds.y_test, arrays[3])
    assert ds.X_train.shape == (20, 28, 28) and ds.X_train.dtype == np.float32
    # second call is served from the cache without fetching
    ds2 = load_mnist(fetch=pytest.fail)
    np.testing.assert_array_equal(ds2.X_train, ds.X_train)


def test_partial_cache_downloads_only_missing(tmp_path, monkeypatch):
    content, _ = _fake_content(tmp_path)
    for name, blob in content.items():
        monkeypatch.setitem(D.MNIST_MD5, name, hashlib.md5(blob).hexdigest())
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in MNIST_FILES[:3]:
        (cache / name).write_bytes(content[name])
    calls = []
    load_mnist(cache_dir=cache, fetch=lambda url: calls.append(url) or content[
        url.rsplit("/", 1)[1]])
    assert calls == [D.MNIST_MIRRORS[0] + MNIST_FILES[3]]


@pytest.fixture(scope="module")
def fashion():
    if not all((FASHION_DIR / n).is_file() for n in MNIST_FILES):
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_DIR}")
    return [read_idx(FASHION_DIR / n) for n in MNIST_FILES]


def test_real_fashion_mnist_files(fashion):
    shapes = [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]
    assert [a.shape for a in fashion] == shapes
    assert all(a.dtype == np.uint8 for a in fashion)
    for labels in fashion[1::2]:
        assert set(np.unique(labels)) == set(range(10))
    for name in MNIST_FILES:
        digest = hashlib.md5(upstream_gzip_bytes(FASHION_DIR / name)).hexdigest()
        assert digest == D.FASHION_MNIST_MD5[name]


# Debian's dataset-fashion-mnist ships the upstream .gz files with normalized gzip
# headers (strip-nondeterminism: FNAME field dropped, mtime reset), so the raw md5s
# differ from the published ones while the deflate streams are byte-identical.
# Restoring the original 2017 header reproduces the published md5 exactly.
_UPSTREAM_MTIME = {"train": 1504176606, "t10k": 1504176627}


def upstream_gzip_bytes(path):
    blob = path.read_bytes()
    if hashlib.md5(blob).hexdigest() == D.FASHION_MNIST_MD5[path.name]:
        return blob
    assert blob[:4] == b"\x1f\x8b\x08\x00", "expected a header-normalized gzip file"
    mtime = _UPSTREAM_MTIME[path.name.split("-")[0]]
    header = (b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03"
              + path.name[:-3].encode() + b"\x00")
    return header + blob[10:]


def test_real_fashion_mnist_found_without_download(fashion, tmp_path):
    ds = load_dataset("fashion_mnist", cache_dir=tmp_path / "empty", n_train=500,
                      download=False)
    assert ds.name == "fashion-mnist" and ds.image_shape == (14, 14)
    assert ds.X_train.shape == (500, 14, 14) and ds.X_test.shape == (10000, 14, 14)
    np.testing.assert_allclose(ds.X_test, avg_pool(fashion[2] / 255.0), atol=1e-6)
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 50))


# ---------------------------------------------------------------------- digits
def test_load_digits():
    ds = load_digits()
    assert ds.name == "digits" and ds.image_shape == (8, 8)
    assert ds.X_train.shape == (1347, 8, 8) and ds.X_test.shape == (450, 8, 8)
    assert ds.X_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    X = np.concatenate([ds.X_train, ds.X_test])
    assert X.min() == 0.0 and X.max() == 1.0
    total = np.bincount(np.concatenate([ds.y_train, ds.y_test]))
    np.testing.assert_allclose(np.bincount(ds.y_test, minlength=10) / 450,
                               total / total.sum(), atol=0.01)
    again = load_digits()
    np.testing.assert_array_equal(again.X_train, ds.X_train)


def test_load_dataset_digits_and_subset():
    ds = load_dataset("digits", n_train=100)
    assert ds.X_train.shape == (100, 8, 8) and ds.image_shape == (8, 8)
    assert np.bincount(ds.y_train).min() >= 9
    pooled = load_dataset("Digits", pool=2)
    assert pooled.X_test.shape == (450, 4, 4) and pooled.image_shape == (4, 4)


def test_load_dataset_mnist_data_dir(tmp_path):
    make_mnist_dir(tmp_path)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.X_train.shape == (20, 14, 14) and ds.image_shape == (14, 14)
    assert load_dataset("mnist", data_dir=tmp_path, pool=1).image_shape == (28, 28)


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match=r"'cifar'.*digits.*mnist.*fashion-mnist"):
        load_dataset("cifar")


# ------------------------------------------------------------------ transforms
def test_avg_pool_values():
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    expected = np.array([[[2.5, 4.5], [10.5, 12.5]]], dtype=np.float32)
    out = avg_pool(img, 2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(avg_pool(img, 4), [[[7.5]]])
    np.testing.assert_array_equal(avg_pool(img, 1), img)
    np.testing.assert_array_equal(avg_pool(np.array([[[0, 255], [255, 255]]], np.uint8)),
                                  [[[191.25]]])


def test_avg_pool_indivisible():
    with pytest.raises(ValueError, match=r"\(2, 6, 9\).*factor 2"):
        avg_pool(np.zeros((2, 6, 9)), 2)


FLAT_IN = np.arange(12).reshape(1, 3, 4)


@pytest.mark.parametrize("order, expected", [
    ("row", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    ("column", [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]),
    ("zigzag", [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]),
])
def test_flatten_orders(order, expected):
    out = flatten_images(np.concatenate([FLAT_IN, FLAT_IN + 100]), order)
    np.testing.assert_array_equal(out, [expected, np.add(expected, 100)])
    assert np.array_equal(FLAT_IN, np.arange(12).reshape(1, 3, 4))  # input untouched


def test_flatten_unknown_order():
    with pytest.raises(ValueError, match="'spiral'"):
        flatten_images(FLAT_IN, "spiral")


def test_subsample_and_split():
    y = np.repeat(np.arange(4), 25)
    X = np.arange(100)
    Xs, ys = subsample(X, y, 20, random_state=1)
    assert len(Xs) == 20 and np.array_equal(np.bincount(ys), [5, 5, 5, 5])
    np.testing.assert_array_equal(y[Xs], ys)
    assert np.array_equal(subsample(X, y, 20, random_state=1)[0], Xs)
    from sklearn.model_selection import train_test_split  # the same subset as splitting the arrays themselves

    expected = train_test_split(X, y, train_size=20, random_state=1, stratify=y)
    assert np.array_equal(Xs, expected[0]) and np.array_equal(ys, expected[2])
    assert all(np.array_equal(a, b) for a, b in zip(train_val_split(X, y, 0.3, random_state=2),
                                                    train_test_split(X, y, test_size=30, random_state=2, stratify=y)))
    assert len(subsample(X, y, 2)[0]) == 2          # too small to stratify: random
    assert sorted(subsample(X, y, 100)[0]) == list(range(100))
    with pytest.raises(ValueError, match="n=101"):
        subsample(X, y, 101)
    X_tr, X_val, y_tr, y_val = train_val_split(X, y, 0.2, random_state=0)
    assert len(X_tr) == 80 and len(X_val) == 20
    assert np.array_equal(np.bincount(y_val), [5, 5, 5, 5])
    assert sorted(np.concatenate([X_tr, X_val])) == list(range(100))
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(X, y, 1.5)


def test_dataset_repr_gives_shapes_not_arrays():
    from tnlearn.datasets import load_dataset

    ds = load_dataset("digits")
    text = repr(ds)
    assert text == (f"Dataset(name='digits', image_shape=(8, 8), n_train={len(ds.y_train)}, "
                    f"n_test={len(ds.y_test)}, classes=10, dtype=float32)")
    assert len(text) < 200
