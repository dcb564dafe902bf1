"""The CIFAR-10 binary reader and loader, on files the tests write (no network)."""

import hashlib
import io
import tarfile

import numpy as np
import pytest

import tnlearn.datasets as D
from tnlearn.datasets import CIFARFormatError, DatasetUnavailableError, load_cifar10, read_cifar_batch


def _batch(n, rng):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)  # channel-major, as the format stores
    data = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).tobytes()
    return data, images.transpose(0, 2, 3, 1), labels


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    return {name: _batch(7 if name != D.CIFAR10_TEST else 5, rng) for name in (*D.CIFAR10_TRAIN, D.CIFAR10_TEST)}


def _archive_bytes(batches):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, (data, _, _) in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_record_is_a_label_then_three_colour_planes(batches):
    data, images, labels = batches[D.CIFAR10_TEST]
    got_images, got_labels = read_cifar_batch(data)
    assert got_images.shape == (5, 32, 32, 3) and got_images.dtype == np.uint8
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("bad, problem", [(b"", "not a whole number"), (b"\x01" * 3072, "not a whole number"),
                                          (b"\x0b" + b"\x00" * 3072, "label 11 is not a CIFAR-10 class")])
def test_broken_batches_are_named(bad, problem):
    with pytest.raises(CIFARFormatError, match=problem):
        read_cifar_batch(bad, "x.bin")


@pytest.mark.parametrize("layout", ["archive", "folder", "loose"])
def test_data_dir_takes_the_archive_its_folder_or_the_batch_files(tmp_path, batches, layout):
    if layout == "archive":
        (tmp_path / D.CIFAR10_ARCHIVE).write_bytes(_archive_bytes(batches))
    else:
        folder = tmp_path / "cifar-10-batches-bin" if layout == "folder" else tmp_path
        folder.mkdir(exist_ok=True)
        for name, (data, _, _) in batches.items():
            (folder / name).write_bytes(data)
    ds = load_cifar10(data_dir=tmp_path)
    assert ds.X_train.shape == (35, 32, 32, 3) and ds.X_test.shape == (5, 32, 32, 3)
    assert ds.X_train.dtype == np.float32 and 0 <= ds.X_train.min() and ds.X_train.max() <= 1
    assert ds.image_shape == (32, 32, 3) and ds.name == "cifar10"
    np.testing.assert_array_equal(ds.y_train, np.concatenate([batches[n][2] for n in D.CIFAR10_TRAIN]))
    np.testing.assert_allclose(ds.X_test, batches[D.CIFAR10_TEST][1] / 255, rtol=1e-6)


def test_missing_data_dir_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds neither cifar-10-binary\.tar\.gz nor the batch files"):
        load_cifar10(data_dir=tmp_path)


def test_an_archive_missing_a_batch_is_named(tmp_path, batches):
    partial = {k: v for k, v in batches.items() if k != "data_batch_3.bin"}
    (tmp_path / D.CIFAR10_ARCHIVE).write_bytes(_archive_bytes(partial))
    with pytest.raises(CIFARFormatError, match="lacks data_batch_3.bin"):
        load_cifar10(data_dir=tmp_path)


def test_download_is_checksummed_and_cached(tmp_path, batches, monkeypatch):
    blob = _archive_bytes(batches)
    monkeypatch.setitem(D.CIFAR10_MD5, D.CIFAR10_ARCHIVE, hashlib.md5(blob).hexdigest())
    calls = []

    def fetch(url):
        calls.append(url)
        return blob

    cache = tmp_path / "cache"
    ds = load_cifar10(cache_dir=cache, fetch=fetch)
    assert calls == [D.CIFAR10_MIRRORS[0] + D.CIFAR10_ARCHIVE] and ds.X_train.shape[0] == 35
    assert load_cifar10(cache_dir=cache, fetch=fetch).X_test.shape[0] == 5 and len(calls) == 1  # from the cache


def test_offline_error_names_the_file_once_and_leaves_no_directory(tmp_path):
    def offline(url):
        raise OSError("network is unreachable")

    cache = tmp_path / "cache" / "cifar10"
    with pytest.raises(DatasetUnavailableError) as info:
        load_cifar10(cache_dir=cache, fetch=offline)
    msg = str(info.value)
    assert "Put this file in" in msg and "data_dir=DIR" in msg and "network is unreachable" in msg
    assert msg.split("Put this file in")[1].count(D.CIFAR10_ARCHIVE) == 1
    assert not (tmp_path / "cache").exists()


def test_a_corrupted_download_is_refused(tmp_path, batches):
    from tnlearn.datasets import ChecksumError

    with pytest.raises(ChecksumError, match="wrong checksum"):
        load_cifar10(cache_dir=tmp_path / "c", fetch=lambda url: _archive_bytes(batches))
    assert not (tmp_path / "c").exists()


@pytest.fixture
def cifar_dir(tmp_path, batches):
    (tmp_path / D.CIFAR10_ARCHIVE).write_bytes(_archive_bytes(batches))
    return tmp_path


def test_colour_images_pool_per_channel_and_flatten_pixel_by_pixel(cifar_dir):
    from tnlearn.datasets import flatten_images, load_dataset

    ds = load_dataset("cifar10", data_dir=cifar_dir, pool=4)
    assert ds.X_train.shape == (35, 8, 8, 3) and ds.image_shape == (8, 8, 3)
    full = load_cifar10(data_dir=cifar_dir).X_train
    np.testing.assert_allclose(ds.X_train[0, 0, 0], full[0, :4, :4].mean(axis=(0, 1)), rtol=1e-6)
    flat = flatten_images(ds.X_train)
    assert flat.shape == (35, 192)
    np.testing.assert_array_equal(flat[0, 3:6], ds.X_train[0, 0, 1])  # a pixel's three channels stay together


def test_cli_trains_on_cifar10_and_refuses_conv_mps_on_colour(cifar_dir, tmp_path, capsys):
    import json

    from tnlearn.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(cifar_dir), "--pool", "4", "--model", "tt-net",
                 "--sweeps", "1", "--out", str(out)]) == 0
    assert "8x8x3 -> 192 inputs" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(cifar_dir), "--model", "conv-mps",
                 "--out", str(tmp_path / "conv")]) == 2
    assert "conv-mps takes grayscale images and CIFAR-10 is colour" in capsys.readouterr().err


def test_the_tt_layer_example_takes_cifar10(cifar_dir, tmp_path, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "tt_layer_mnist.py"
    monkeypatch.setattr(sys, "argv", [example.name, "--dataset", "cifar10", "--data-dir", str(cifar_dir), "--ranks",
                                      "1", "--sweeps", "1", "--epochs-per-bond", "0.2", "--figures-dir",
                                      str(tmp_path / "f")])
    monkeypatch.chdir(tmp_path)
    try:
        runpy.run_path(str(example), run_name="__main__")
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert any((tmp_path / "f").rglob("*.png"))


def test_raw_keeps_the_stored_bytes_and_the_default_divides_them_by_255(cifar_dir, batches):
    raw = load_cifar10(data_dir=cifar_dir, raw=True)
    assert raw.X_train.dtype == np.uint8
    np.testing.assert_array_equal(raw.X_test, batches[D.CIFAR10_TEST][1])
    unit = load_cifar10(data_dir=cifar_dir)
    assert np.array_equal(unit.X_train, raw.X_train.astype(np.float32) / np.float32(255))  # bit for bit
