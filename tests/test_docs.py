"""The README and the examples are executable: every Python block and every example runs.

The README's Python blocks run in order in one namespace, as a reader would
type them (a block whose first line says it needs a GPU is skipped without
one; the MPI block runs as a one-rank world where mpi4py is installed).  Each
example script runs on small data (the shipped digits, or MNIST-format files
the test writes) with its outputs in a temporary directory.
"""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks(text):
    """The fenced ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def quick_start_commands(text):
    """The two commands of the README's quick start (comments stripped)."""
    section = text[text.index("## Quick start"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("   #")[0].strip() for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands_that_install_the_test_tools():
    """The first installs what the second needs (pytest comes with the test extra)."""
    install, test = quick_start_commands(README.read_text())
    assert install.startswith('pip install -e ".[test]" && tnlearn train --dataset digits')
    assert test == "python -m pytest -q"


def test_ci_runs_the_readme_commands_verbatim():
    """.ci/run's quick-start block is the README's two commands, character for character, in order."""
    ci = (ROOT / ".ci" / "run").read_text()
    block = ci.split("# --- the README's quick start, verbatim ---\n")[1].split("# --- end of the README's quick start ---")[0]
    assert [line for line in block.splitlines() if line.strip()] == quick_start_commands(README.read_text())


def _needs_skip(block):
    first = block.splitlines()[0]
    if "needs a CUDA GPU" in first:
        from tnlearn.backend import BackendUnavailableError, get_backend

        try:
            get_backend("cupy")
        except BackendUnavailableError as exc:
            return f"needs a GPU: {exc}"
    if "needs tnlearn[mpi]" in first:
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            return "needs mpi4py (tnlearn[mpi])"
    return None


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing the blocks write lands in the repository
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5
    namespace = {"__name__": "__readme__"}
    ran = 0
    for i, block in enumerate(blocks):
        if _needs_skip(block):
            continue
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"README python block {i + 1} failed: {type(exc).__name__}: {exc}\n{block}")
        ran += 1
    assert ran >= 4
    assert namespace["clf"].score(namespace["X_test"], namespace["y_test"]) > 0.9


# ------------------------------------------------------------------ examples
def _run_example(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name] + [str(a) for a in argv])
    monkeypatch.setenv("MPLBACKEND", "Agg")
    try:
        runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
    except SystemExit as exc:
        assert exc.code in (0, None), f"{name} exited with {exc.code}"


@pytest.fixture(scope="module")
def mnist_like(tmp_path_factory):
    """Four MNIST-format IDX files of small random 28x28 'digits' (two visible classes of blobs)."""
    from tnlearn.datasets import MNIST_FILES, write_idx

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("mnist")

    def images(labels):
        out = rng.integers(0, 40, size=(len(labels), 28, 28)).astype(np.uint8)
        for img, label in zip(out, labels):
            r, c = divmod(int(label) % 4, 2)
            img[4 + 12 * r : 12 + 12 * r, 4 + 12 * c : 12 + 12 * c] = 250
        return out

    y_train, y_test = rng.integers(0, 4, 240).astype(np.uint8), rng.integers(0, 4, 80).astype(np.uint8)
    for name, array in zip(MNIST_FILES, (images(y_train), y_train, images(y_test), y_test)):
        write_idx(folder / name, array)
    return folder


def test_example_physics_interop(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run_example("physics_interop.py", ["--out", tmp_path / "e.png"], monkeypatch)
    assert (tmp_path / "e.png").is_file()


def test_example_physics_interop_does_not_overwrite_the_committed_figure():
    source = (ROOT / "examples" / "physics_interop.py").read_text()
    default = re.search(r'"--out", default="([^"]+)"', source).group(1)
    assert not default.startswith("figures/"), default


def test_example_conv_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run_example("conv_stage.py", ["--dataset", "digits", "--bond-dim", 4, "--sweeps", 1, "--channels", 2,
                                   "--no-full-mps", "--runs-dir", tmp_path / "runs", "--figures-dir", tmp_path / "f"],
                 monkeypatch)
    assert (tmp_path / "f" / "accuracy.png").is_file()


def test_example_train_mnist(tmp_path, monkeypatch, mnist_like):
    monkeypatch.chdir(tmp_path)
    _run_example("train_mnist.py", ["--dataset", "mnist", "--data-dir", mnist_like, "--bond-dims", 4, "--sweeps", 1,
                                    "--n-iter", 1, "--runs-dir", tmp_path / "runs", "--figures-dir", tmp_path / "f"],
                 monkeypatch)
    assert any((tmp_path / "f").rglob("accuracy.png"))


def test_example_compress_mlp(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run_example("compress_mlp.py", ["--dataset", "digits", "--hidden", 64, "--cores", 3, "--ranks", 1, 4,
                                     "--sweeps", 1, "--out", tmp_path / "f"], monkeypatch)
    out = capsys.readouterr().out
    assert (tmp_path / "f" / "digits_dense_to_tt.png").is_file()  # named by data set: never the README's figure
    table = json.loads((tmp_path / "f" / "digits_dense_to_tt.json").read_text())
    assert [r["rank"] for r in table["rows"]] == [1, 4] and "| max TT-rank |" in out
    for row in table["rows"]:  # the sweeps win back what the TT-SVD of a trained dense layer loses
        assert row["fine_tuned"] > row["compressed"] and row["compression"] > 1


def test_example_tt_layer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run_example("tt_layer_mnist.py", ["--dataset", "digits", "--ranks", 1, 2, "--sweeps", 1,
                                       "--epochs-per-bond", 0.2, "--figures-dir", tmp_path / "f"], monkeypatch)
    assert any((tmp_path / "f").glob("*.png"))
