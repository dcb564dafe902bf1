"""`tnlearn train --model conv-mps | tt-net | tn-cnn`: the same run directory as the MPS, end to end on digits."""

import json
import sys

import numpy as np
import pytest

from tnlearn.cli import main
from tnlearn.io import load_model

MODELS = {
    "conv-mps": ["--model", "conv-mps", "--bond-dim", "8", "--channels", "3"],
    "tt-net": ["--model", "tt-net", "--tt-cores", "3", "--tt-rank", "2", "--epochs-per-bond", "2"],
    "tn-cnn": ["--model", "tn-cnn", "--cnn-channels", "4", "--n-hidden", "16", "--tt-rank", "4"],
}
KINDS = {"conv-mps": "ConvMPSClassifier", "tt-net": "TTNetClassifier", "tn-cnn": "TNCNNClassifier"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "run"
    argv = ["train", "--dataset", "digits", "--sweeps", "2", "--quiet", "--out", str(out)] + MODELS[request.param]
    assert main(argv) == 0
    return request.param, out


def test_run_directory_and_model(run, capsys):
    name, out = run
    for f in ("history.json", "run.json", "model.npz", "accuracy.png", "truncation.png", "bond_dims.png"):
        assert (out / f).is_file(), f
    history = json.loads((out / "history.json").read_text())
    assert [r["sweep"] for r in history] == [1, 2]
    assert history[-1]["test_accuracy"] > 0.8
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["options"]["model"] == name and run_info["pool"] == 1 and run_info["status"] == "finished"
    model = load_model(out / "model.npz")
    assert type(model).__name__ == KINDS[name]
    if name == "conv-mps":
        assert "conv" in history[-1]["stages"] and model.n_channels == 3
    if name == "tn-cnn":
        assert list(history[-1]["stages"]) == ["conv1", "dense"] and (out / "stages.png").is_file()
        assert model.channels == (4,) and model.n_hidden == 16 and model.max_rank == 4
        assert model.cutoff == 1e-10  # --cutoff reaches the model (its default here)
    # evaluate reproduces the recorded test accuracy
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"accuracy {history[-1]['test_accuracy']:.6f}" in text


def test_resume_is_refused_with_the_way_out(run, capsys):
    name, out = run
    if name == "tn-cnn":
        pytest.skip("tn-cnn runs resume (test_tn_cnn_resume_continues_bit_for_bit)")
    assert main(["train", "--resume", str(out), "--sweeps", "3"]) == 2
    err = capsys.readouterr().err
    assert "--resume continues --model mps / tn-cnn runs only" in err and name in err


def test_tn_cnn_resume_continues_bit_for_bit(tmp_path):
    base = ["train", "--dataset", "digits", "--n-train", "300", "--quiet", "--no-plots", "--model", "tn-cnn",
            "--cnn-channels", "4", "--n-hidden", "16", "--epochs-per-bond", "1"]
    assert main(base + ["--sweeps", "3", "--out", str(tmp_path / "straight")]) == 0
    assert main(base + ["--sweeps", "1", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--sweeps", "3", "--quiet", "--no-plots"]) == 0
    a, b = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("straight", "split"))
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and len(b) == 3
    X = np.random.default_rng(0).random((5, 64))
    np.testing.assert_array_equal(load_model(tmp_path / "straight").decision_function(X),
                                  load_model(tmp_path / "split").decision_function(X))


@pytest.mark.parametrize("mpi4py_installed", [True, False])
def test_staged_models_refuse_mpi(tmp_path, capsys, monkeypatch, mpi4py_installed):
    """The model's limit is named whether or not mpi4py is there (installing it could not help)."""
    if not mpi4py_installed:
        monkeypatch.setitem(sys.modules, "mpi4py", None)  # `import mpi4py` raises ImportError
    argv = ["train", "--model", "tt-net", "--distributed", "mpi", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--distributed mpi trains --model mps / tn-cnn only" in err and "pip install" not in err


def test_plot_compares_model_kinds(run, tmp_path, capsys):
    _, out = run
    assert main(["plot", str(out), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "accuracy.png").is_file()


@pytest.mark.parametrize(
    "model, extra, layout",
    [
        ("mps", [], "images 8x8 -> 64 sites (row order)"),
        ("conv-mps", ["--channels", "2"], "images 8x8 -> 4x4 grid of 2x2 patches -> 16 head sites"),
        ("tt-net", ["--tt-cores", "3", "--tt-rank", "2"],
         "images 8x8 -> 64 inputs (row order) -> TT layer with 3 cores"),
        ("tn-cnn", ["--cnn-channels", "4", "8", "--n-hidden", "16"],
         "images 8x8 -> 8x8x1 -> conv 3x3 4 ch + max-pool 2 -> 4x4x4 -> conv 3x3 8 ch + max-pool 2 -> 2x2x8 -> "
         "dense TT layer (rank 8) 32 -> 16 -> output layer"),
        ("tn-cnn", ["--cnn-channels", "4", "8", "--kernel-size", "2", "--n-hidden", "16"],  # an even kernel shrinks
         "images 8x8 -> 8x8x1 -> conv 2x2 4 ch + max-pool 2 -> 3x3x4 -> conv 2x2 8 ch + max-pool 2 -> 1x1x8 -> "
         "dense TT layer (rank 8) 8 -> 16 -> output layer"),
    ],
)
def test_status_line_describes_the_model(model, extra, layout, tmp_path, capsys):
    """The line before training says what the model makes of the images (not "64 sites" for every model)."""
    size = [] if model in ("tt-net", "tn-cnn") else ["--bond-dim", "4"]  # TT models have TT-ranks (--tt-rank)
    argv = ["train", "--dataset", "digits", "--model", model, "--sweeps", "1", "--n-train", "100",
            "--out", str(tmp_path / "run")] + size + extra
    assert main(argv) == 0
    status = capsys.readouterr().out.splitlines()[0]
    assert status == f"digits: 100 train / 450 test {layout}"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "conv-mps", "--order", "zigzag"], "--order zigzag would scramble the image patches"),
        (["--model", "tt-net", "--loss", "cross_entropy"], "--loss only applies to --model mps; tt-net trains with cross-entropy"),
        (["--model", "conv-mps", "--solver", "cg", "--truncation", "svd"], "--solver, --truncation only apply to --model mps; conv-mps's head uses gd"),
        (["--tt-rank", "8"], "--tt-rank only applies to --model tt-net / tn-cnn, and this run is --model mps: add --model tt-net"),
        (["--model", "tt-net", "--cnn-channels", "8", "16"], "--cnn-channels only applies to --model tn-cnn, and this run is --model tt-net"),
        (["--model", "tn-cnn", "--tt-cores", "3"], "--tt-cores only applies to --model tt-net, and this run is --model tn-cnn"),
        (["--model", "tn-cnn", "--tt-rank", "auto"], "--tt-rank auto (the ARD prior) is for --model tt-net"),
        (["--model", "tn-cnn", "--bond-dim", "8"], "--model tn-cnn has TT-ranks: use --tt-rank R and drop --bond-dim"),
        (["--model", "tn-cnn", "--loss", "mse"], "--loss only applies to --model mps; tn-cnn trains with cross-entropy"),
        (["--model", "tn-cnn", "--order", "column"], "--order column would scramble the image patches: --model tn-cnn"),
        (["--model", "tn-cnn", "--n-hidden", "-1"], "argument --n-hidden: must be an integer >= 0, got -1"),
        (["--model", "conv-mps", "--tt-max-rank", "12", "--lr-decay", "0.5"], "--tt-max-rank, --lr-decay only apply to --model tt-net"),
        (["--model", "tt-net", "--channels", "2"], "--channels only applies to --model conv-mps, and this run is --model tt-net"),
        (["--model", "tt-net", "--bond-dim", "8"], "--model tt-net has TT-ranks: use --tt-rank R"),
        (["--model", "tt-net", "--tt-max-rank", "12"], "this run has a fixed --tt-rank 4: add --tt-rank auto"),
        (["--model", "tt-net", "--tt-rank", "2", "--tt-max-rank", "16"], "set the fixed rank with --tt-rank 16"),
        (["--model", "tt-net", "--tt-cores", "1"], "argument --tt-cores: must be an integer >= 2, got 1"),
        (["--dataset", "digits", "--n-train", "5000"], "from 1347 samples: ask for 1 to 1347"),
        (["--tt-rank", "4"], "--tt-rank only applies to --model tt-net"),  # written out, even at its default
        (["--model", "mps", "--tt-max-rank=8"], "--tt-max-rank only applies to --model tt-net"),
        (["--model", "tt-net", "--bond-dim", "20"], "--model tt-net has TT-ranks"),
    ],
)
def test_options_that_do_not_apply_are_refused(extra, message, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r")] + extra) == 2
    assert message in capsys.readouterr().err


def test_python_defaults_are_the_command_lines():
    """`tnlearn train --model X` and `XClassifier()` train the same model (the README shows both)."""
    from tnlearn import ConvMPSClassifier, MPSClassifier, TNCNNClassifier, TTNetClassifier
    from tnlearn.cli import _default_max_rank, build_parser

    args = build_parser().parse_args(["train", "--out", "r"])
    cnn = TNCNNClassifier()
    assert (cnn.channels, cnn.kernel_size, cnn.conv_rank, cnn.n_hidden, cnn.max_rank, cnn.epochs_per_bond,
            cnn.learning_rate, cnn.lr_decay) == (tuple(args.cnn_channels), args.kernel_size, args.conv_rank,
                                                 args.n_hidden, _default_max_rank("tn-cnn"), args.epochs_per_bond,
                                                 args.learning_rate, args.lr_decay)
    conv, tt, mps = ConvMPSClassifier(), TTNetClassifier(), MPSClassifier()
    assert (conv.patch, conv.n_channels, conv.max_bond, conv.n_sweeps) == (args.patch, args.channels, args.bond_dim,
                                                                          args.sweeps)
    assert (tt.max_rank, tt.n_cores, tt.n_sweeps, tt.epochs_per_bond, tt.learning_rate, tt.lr_decay) == (
        _default_max_rank("tt-net"), args.tt_cores, args.sweeps, args.epochs_per_bond, args.learning_rate, args.lr_decay)
    assert (mps.max_bond, mps.n_sweeps, mps.cutoff) == (args.bond_dim, args.sweeps, args.cutoff)


def test_tt_net_automatic_rank_from_the_cli(tmp_path, capsys):
    out = tmp_path / "auto"
    argv = ["train", "--dataset", "digits", "--model", "tt-net", "--tt-rank", "auto", "--tt-max-rank", "8",
            "--sweeps", "2", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "TT-rank auto (<= 8)" in text
    model = load_model(out)
    assert model.rank_prior == "ard" and model.max_rank == 8 and max(model.tt_.ranks) <= 8
    history = json.loads((out / "history.json").read_text())
    for record in history:  # every record carries the ranks found and the compression
        assert len(record["tt_ranks"]) == 4 and record["compression"] > 1 and record["n_params"] > 0
    assert history[-1]["tt_ranks"] == model.tt_.ranks
    assert (out / "ranks.png").is_file()
    assert main(["train", "--dataset", "digits", "--model", "tt-net", "--tt-rank", "many", "--out",
                 str(tmp_path / "x")]) == 2
    assert "must be an integer >= 1 or 'auto', got many" in capsys.readouterr().err


def test_automatic_rank_starts_where_a_28x28_tt_layer_stays_1000x_smaller():
    """--tt-rank auto starts at --tt-max-rank 8: at most rank 8, the default 28x28 layer is >= 1,000x compressed."""
    from tnlearn.cli import build_parser
    from tnlearn.models import TTNetClassifier
    from tnlearn.stages.tt import TTMatrix

    args = build_parser().parse_args(["train", "--model", "tt-net", "--tt-rank", "auto"])
    assert args.tt_max_rank == 8
    in_shape, hidden = TTNetClassifier()._shapes(28 * 28)
    rng = np.random.default_rng(0)
    assert TTMatrix.random(in_shape, hidden, 8, rng).compression >= 1000
    assert TTMatrix.random(in_shape, hidden, 9, rng).compression < 1000  # 8 is the largest such rank


def test_a_tt_net_run_directory_is_not_offered_resume(tmp_path, capsys):
    """--resume continues mps runs only: the message for an occupied --out must not suggest it for tt-net."""
    out = tmp_path / "tt"
    argv = ["train", "--dataset", "digits", "--model", "tt-net", "--sweeps", "1", "--n-train", "200",
            "--quiet", "--no-plots", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a trained run" in err and "--overwrite" in err and "--resume" not in err


@pytest.mark.parametrize("spelling", ["fashion_mnist", "Fashion-MNIST", "FASHION_MNIST"])
def test_dataset_names_are_read_as_load_dataset_reads_them(spelling):
    from tnlearn.cli import build_parser

    assert build_parser().parse_args(["train", "--dataset", spelling, "--out", "r"]).dataset == "fashion-mnist"
    assert build_parser().parse_args(["train", "--dataset", "CIFAR-10", "--out", "r"]).dataset == "cifar10"
