"""Tests for the ``tnlearn`` command line (in-process ``main``; one subprocess for the entry point)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tnlearn.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("accuracy.png", "truncation.png", "bond_dims.png")
RECORD_KEYS = {"sweep", "loss", "train_accuracy", "test_accuracy", "max_truncation_error",
               "mean_truncation_error", "bond_dims", "seconds", "truncation_errors", "stages",
               "validation_accuracy", "rejected_updates", "data_loss", "tt_ranks", "compression", "n_params"}
FAST = ["--dataset", "digits", "--bond-dim", "4", "--sweeps", "1", "--quiet"]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG file"
    assert len(data) > 5000, f"{path} is suspiciously small ({len(data)} bytes)"


def assert_one_line_error(capsys, rc, *fragments):
    out, err = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tnlearn: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One fast digits run shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "m4"
    assert main(["train", *FAST, "--out", str(out)]) == 0
    return out


def test_train_writes_run_directory(run_dir):
    history = json.loads((run_dir / "history.json").read_text())
    assert isinstance(history, list) and len(history) == 1
    for record in history:
        assert set(record) == RECORD_KEYS
        assert 0.0 <= record["train_accuracy"] <= 1.0
        assert 0.0 <= record["test_accuracy"] <= 1.0
        assert max(record["bond_dims"]) <= 4
    run = json.loads((run_dir / "run.json").read_text())
    assert run["dataset"] == "digits" and run["image_shape"] == [8, 8]
    assert run["order"] == "row" and run["pool"] == 1
    assert (run["n_train"], run["n_test"]) == (1347, 450)
    assert run["options"]["bond_dim"] == 4 and run["options"]["sweeps"] == 1
    assert run["final_test_accuracy"] == history[-1]["test_accuracy"]
    assert run["total_seconds"] > 0 and run["tnlearn_version"]
    assert (run_dir / "model.npz").stat().st_size > 0
    for name in PLOTS:
        assert_png(run_dir / name)
    assert not list(run_dir.glob(".*.tmp"))  # no leftovers of the atomic writes


def test_train_options_verbose_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--bond-dim", "4", "--sweeps", "2", "--order", "zigzag", "--n-train", "300",
               "--dtype", "float64", "--seed", "3", "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert len([line for line in stdout if re.match(r"^sweep +\d+ ", line)]) == 2  # verbose=2
    assert "test accuracy" in stdout[-1] and str(out) in stdout[-1]
    history = json.loads((out / "history.json").read_text())
    assert [r["sweep"] for r in history] == [1, 2]
    run = json.loads((out / "run.json").read_text())
    assert run["order"] == "zigzag" and run["n_train"] == 300
    assert run["options"]["dtype"] == "float64" and run["options"]["seed"] == 3


def test_train_quiet_prints_only_summary(tmp_path, capsys):
    assert main(["train", *FAST, "--n-train", "200", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("test accuracy")


def test_a_training_subset_missing_classes_is_warned_about(tmp_path, capsys):
    """--n-train 5 on the ten digits trains on five classes: said on stderr, with the fix."""
    assert main(["train", *FAST, "--n-train", "5", "--out", str(tmp_path / "few")]) == 0
    err = capsys.readouterr().err
    assert "warning: the 5 training images hold 5 of the 10 classes" in err and "raise --n-train" in err
    assert main(["train", *FAST, "--n-train", "200", "--out", str(tmp_path / "all")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_evaluate_matches_history(run_dir, capsys):
    last = json.loads((run_dir / "history.json").read_text())[-1]
    for target in (run_dir, run_dir / "model.npz"):
        assert main(["evaluate", str(target)]) == 0
        out = capsys.readouterr().out
        correct, total = map(int, re.search(r"\((\d+)/(\d+) correct\)", out).groups())
        assert correct / total == pytest.approx(last["test_accuracy"], abs=1e-12)
        assert "confusion matrix" in out
        rows = [line.split() for line in out.splitlines() if re.match(r"^\s+\d\s", line)]
        assert len(rows) == 10 and sum(int(v) for row in rows for v in row[1:]) == total


def test_plot_two_runs(run_dir, tmp_path, capsys):
    other = tmp_path / "m6"  # a second run directory, without training again
    other.mkdir()
    history = json.loads((run_dir / "history.json").read_text())
    history[0]["bond_dims"] = [min(6, b + 2) for b in history[0]["bond_dims"]]
    (other / "history.json").write_text(json.dumps(history))
    (other / "run.json").write_text(json.dumps({"options": {"bond_dim": 6}}))
    out = tmp_path / "compare"
    assert main(["plot", str(run_dir), str(other), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / name) for name in PLOTS]
    for name in PLOTS:
        assert_png(out / name)


def test_plot_single_run_defaults_to_run_dir(tmp_path, run_dir, capsys):
    for name in PLOTS:
        (run_dir / name).unlink()
    assert main(["plot", str(run_dir), "--labels", "digits m=4"]) == 0
    for name in PLOTS:
        assert_png(run_dir / name)
    # the run directory holds its model, so the entanglement profile is drawn too
    printed = capsys.readouterr().out.split()
    assert printed[-1] == str(run_dir / "entanglement.png")
    assert_png(run_dir / "entanglement.png")


def test_error_missing_data_dir(tmp_path, capsys):
    rc = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"),
               "--out", str(tmp_path / "run")])
    assert_one_line_error(capsys, rc, "nowhere")
    assert not (tmp_path / "run").exists()


def test_error_dataset_not_cached_no_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TNLEARN_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    rc = main(["train", "--dataset", "mnist", "--no-download", "--out", str(tmp_path / "run")])
    assert_one_line_error(capsys, rc, "MNIST is not available")


def test_error_missing_history(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["plot", str(tmp_path / "empty")])
    assert_one_line_error(capsys, rc, "history.json")


def test_error_corrupt_model(tmp_path, capsys):
    bad = tmp_path / "model.npz"
    bad.write_bytes(b"this is not a zip archive")
    rc = main(["evaluate", str(bad), "--dataset", "digits"])
    assert_one_line_error(capsys, rc, "not a tnlearn model")


def test_error_corrupt_history(tmp_path, capsys):
    (tmp_path / "history.json").write_text("[{")
    assert_one_line_error(capsys, main(["plot", str(tmp_path)]), "history.json")


def test_error_bad_option_combination(tmp_path, capsys):
    rc = main(["train", *FAST, "--solver", "cg", "--loss", "cross_entropy", "--out", str(tmp_path)])
    assert_one_line_error(capsys, rc, "solver")


def test_error_wrong_pooling_on_evaluate(run_dir, capsys):
    assert_one_line_error(capsys, main(["evaluate", str(run_dir), "--pool", "2"]), "features")


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "cifar", "--out", "x"],
    ["train", "--bond-dim", "0", "--out", "x"],
    ["train"],
    [],
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_the_console_command_freezes_what_is_left_before_the_exit(monkeypatch, capsys):
    """``tnlearn`` (pyproject's script) is ``cli.run``: main's status, and gc.freeze after it, not before."""
    import gc
    import tomllib

    from tnlearn import cli

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tnlearn"] == "tnlearn.cli:run"
    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(cli, "main", lambda argv=None: calls.append("main") or 7)
    assert cli.run() == 7 and calls == ["main", "freeze"]


def test_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "tnlearn.cli", "train", "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: tnlearn train")
    assert "--bond-dim" in proc.stdout and "--out" in proc.stdout


def _history_without_seconds(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((run_dir / "history.json").read_text())]


RESUMABLE = ["--dataset", "digits", "--bond-dim", "10", "--n-train", "500", "--quiet"]


def test_resume_continues_to_the_same_result(tmp_path, capsys):
    """2 sweeps, then --resume to 3, equals 3 sweeps in one go (bit-identical history and model)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", *RESUMABLE, "--sweeps", "3", "--out", str(whole)]) == 0
    assert main(["train", *RESUMABLE, "--sweeps", "2", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--sweeps", "3", "--quiet"]) == 0
    assert _history_without_seconds(split) == _history_without_seconds(whole)
    from tnlearn.io import load_model

    import numpy as np

    a, b = load_model(split / "model.npz"), load_model(whole / "model.npz")
    for x, y in zip(a.head_.cores, b.head_.cores):
        np.testing.assert_array_equal(x, y)
    # asking for no more sweeps than done is not an error
    capsys.readouterr()
    assert main(["train", "--resume", str(split), "--sweeps", "2", "--quiet"]) == 0
    assert "already has 3 sweeps" in capsys.readouterr().out


def test_resume_errors(tmp_path, capsys):
    assert_one_line_error(capsys, main(["train", "--resume", str(tmp_path), "--quiet"]), "run.json not found", "--resume")
    assert_one_line_error(capsys, main(["train", *FAST]), "--out RUNDIR", "--resume RUNDIR")


def test_kill_during_training_then_resume_completes(tmp_path):
    """kill -9 at a random moment after the first checkpoint; --resume then finishes the run."""
    import os
    import random
    import signal
    import time

    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", "import sys; from tnlearn.cli import main; sys.exit(main(sys.argv[1:]))",
           "train", "--dataset", "digits", "--bond-dim", "8", "--sweeps", "6", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "model.npz").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 0.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (out / "model.npz").exists()
    assert main(["train", "--resume", str(out), "--sweeps", "6", "--quiet"]) == 0
    history = json.loads((out / "history.json").read_text())
    # the run ends where an uninterrupted one ends: after 6 sweeps, or earlier once a sweep would
    # have raised the loss (converged)
    ref = tmp_path / "uninterrupted"
    assert main(["train", "--dataset", "digits", "--bond-dim", "8", "--sweeps", "6", "--quiet", "--out", str(ref)]) == 0
    reference = json.loads((ref / "history.json").read_text())
    assert [r["sweep"] for r in history] == [r["sweep"] for r in reference]
    assert [r["loss"] for r in history] == [r["loss"] for r in reference]


def test_killed_right_after_the_first_model_write_still_resumes(tmp_path, monkeypatch):
    """The window kill -9 can hit: model.npz written, history.json and run.json not yet."""
    import tnlearn.cli as cli

    class Killed(BaseException):
        pass

    out = tmp_path / "window"
    real = cli._write_json

    def dies_after_the_model(path, obj):
        if (out / "model.npz").exists():
            raise Killed
        real(path, obj)

    monkeypatch.setattr(cli, "_write_json", dies_after_the_model)
    with pytest.raises(Killed):
        main(["train", *RESUMABLE, "--sweeps", "2", "--out", str(out)])
    monkeypatch.setattr(cli, "_write_json", real)
    assert main(["train", "--resume", str(out), "--sweeps", "2", "--quiet"]) == 0
    assert [r["sweep"] for r in json.loads((out / "history.json").read_text())] == [1, 2]


def test_a_new_run_never_pairs_with_an_old_runs_model(tmp_path, monkeypatch, capsys):
    """--out into a trained run is refused; --overwrite removes the old model before the new run.json."""
    import tnlearn.cli as cli

    out = tmp_path / "again"
    assert main(["train", *RESUMABLE, "--sweeps", "1", "--out", str(out)]) == 0
    before = (out / "model.npz").read_bytes()
    capsys.readouterr()
    assert_one_line_error(capsys, main(["train", *RESUMABLE, "--sweeps", "1", "--out", str(out)]),
                          "already holds a trained run", f"--resume {out}", "--overwrite")
    assert (out / "model.npz").read_bytes() == before  # nothing lost
    only_interrupted = tmp_path / "ctrl-c-before-the-first-sweep"
    only_interrupted.mkdir()
    (only_interrupted / "interrupted.npz").write_bytes(before)
    assert_one_line_error(capsys, main(["train", *RESUMABLE, "--sweeps", "1", "--out", str(only_interrupted)]),
                          "already holds a trained run (interrupted.npz)", "--overwrite")
    capsys.readouterr()
    main(["train", *RESUMABLE, "--sweeps", "1", "--out", str(only_interrupted)])
    assert "--resume" not in capsys.readouterr().err  # no finished sweep: nothing --resume could continue
    assert (only_interrupted / "interrupted.npz").read_bytes() == before
    for refused, says in ((["--cutoff", "-1"], "cutoff"), (["--damping", "-1"], "damping"),
                          (["--validation-fraction", "1.5"], "validation_fraction"),
                          (["--solver", "cg", "--loss", "cross_entropy"], "solver='cg' minimises the squared loss")):
        # a value or combination the estimator refuses fails before --overwrite removes anything
        assert_one_line_error(capsys, main(["train", *RESUMABLE, "--sweeps", "1", "--out", str(out), "--overwrite",
                                            *refused]), says)
        assert (out / "model.npz").read_bytes() == before and (out / "history.json").exists()
        assert json.loads((out / "run.json").read_text())["options"]["cutoff"] != -1

    class Killed(BaseException):
        pass

    def killed_in_fit(*args, **kwargs):
        raise Killed

    from tnlearn import MPSClassifier

    def ctrl_c_in_the_first_sweep(self, *args, **kwargs):
        raise KeyboardInterrupt

    stopped = tmp_path / "ctrl-c-in-the-first-sweep"
    monkeypatch.setattr(MPSClassifier, "fit", ctrl_c_in_the_first_sweep)
    assert main(["train", *RESUMABLE, "--sweeps", "1", "--out", str(stopped)]) == 130
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "--overwrite" in err and "--resume" not in err
    monkeypatch.undo()
    assert main(["train", *RESUMABLE, "--sweeps", "1", "--out", str(stopped), "--overwrite"]) == 0  # the advice works
    monkeypatch.setattr(MPSClassifier, "fit", killed_in_fit)  # the new run dies before its first sweep
    with pytest.raises(Killed):
        main(["train", *RESUMABLE, "--bond-dim", "3", "--sweeps", "1", "--out", str(out), "--overwrite"])
    monkeypatch.undo()
    assert json.loads((out / "run.json").read_text())["options"]["bond_dim"] == 3
    assert not (out / "model.npz").exists()  # the old model cannot be resumed with the new options
    assert_one_line_error(capsys, main(["train", "--resume", str(out), "--sweeps", "1"]), "model.npz not found")
    assert cli.main(["train", *RESUMABLE, "--bond-dim", "3", "--sweeps", "1", "--out", str(out), "--overwrite"]) == 0


def test_a_nan_update_mid_sweep_is_rejected_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    """A bond update turning NaN in sweep 2 is undone by the safeguard; the run finishes with a finite model."""
    import numpy as np

    import tnlearn.sweeps as sweeps

    real = sweeps.solve_local
    calls = {"n": 0}
    n_bonds_per_sweep = 2 * (64 - 1)

    def poisoned(problem, Bs, y, opts, want_grams=False):
        calls["n"] += 1
        Bs, f, grams = real(problem, Bs, y, opts, want_grams)
        if n_bonds_per_sweep + 10 <= calls["n"] < n_bonds_per_sweep + 14:  # bonds in the middle of sweep 2
            Bs = Bs * np.nan
        return Bs, f, grams

    monkeypatch.setattr(sweeps, "solve_local", poisoned)
    out = tmp_path / "nan"
    assert main(["train", *RESUMABLE, "--sweeps", "3", "--out", str(out)]) == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 3 and all(np.isfinite(r["loss"]) for r in history)
    assert history[1]["rejected_updates"] >= 1


def test_a_diverged_sweep_is_rolled_back_with_a_warning(tmp_path, capsys, monkeypatch):
    """A sweep whose loss turns non-finite is undone: model.npz holds the sweep before, and the CLI says so."""
    import numpy as np

    import tnlearn.models.mps_classifier as mpsc
    from tnlearn.io import load_model

    real = mpsc.sweep
    calls = {"n": 0}

    def exploding(head, *a, **k):
        calls["n"] += 1
        result = real(head, *a, **k)
        if calls["n"] == 2:  # the network itself turns NaN in sweep 2 (what no bond check can see coming)
            head.cores[3] = head.cores[3] * np.nan
            result.infos[0].objective_after = float("nan")
        return result

    monkeypatch.setattr(mpsc, "sweep", exploding)
    out = tmp_path / "diverged"
    assert main(["train", *RESUMABLE, "--sweeps", "3", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "tnlearn: warning:" in err and "sweep 2 diverged" in err and "rolled back" in err
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1
    model = load_model(out / "model.npz")
    assert all(np.all(np.isfinite(c)) for c in model.head_.cores)


def test_ctrl_c_finishes_the_bond_saves_and_exits_cleanly(tmp_path):
    import signal
    import time

    from tnlearn.io import load_model

    out = tmp_path / "sigint"
    # every bond held up by 5 ms (~0.6 s a sweep): the sweeps converge and the fit stops by itself after
    # about five sweeps, and the signal must land while it still runs, however fast the engine gets
    slow_bonds = ("import sys, time; import tnlearn.sweeps as s; advance = s.advance_past_bond; "
                  "s.advance_past_bond = lambda *a: (time.sleep(0.005), advance(*a))[1]; "
                  "from tnlearn.cli import main; sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", slow_bonds,
           "train", "--dataset", "digits", "--bond-dim", "16", "--sweeps", "60", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "model.npz").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before the signal could be sent"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted:" in err and "--resume" in err
    model = load_model(out / "interrupted.npz")  # a consistent network, whatever the label's site
    done = len(json.loads((out / "history.json").read_text()))
    assert 1 <= done < 60 and len(model.history_) == done
    assert main(["train", "--resume", str(out), "--sweeps", str(done + 1), "--quiet"]) == 0


def test_ctrl_c_while_a_checkpoint_is_written_leaves_the_model_and_its_history(tmp_path, monkeypatch, capsys):
    """A SIGINT between writing model.npz and history.json waits for both: the run directory stays resumable."""
    import os
    import signal

    import tnlearn.io as tio
    from tnlearn.io import load_model

    real_save = tio.save_model

    def save_then_signal(model, path, *args, **kwargs):
        real_save(model, path, *args, **kwargs)
        if Path(path).name == "model.npz":
            os.kill(os.getpid(), signal.SIGINT)  # delivered before history.json is written

    monkeypatch.setattr(tio, "save_model", save_then_signal)
    out = tmp_path / "mid-checkpoint"
    assert main(["train", *RESUMABLE, "--sweeps", "3", "--out", str(out)]) == 130
    assert "interrupted:" in capsys.readouterr().err
    history = json.loads((out / "history.json").read_text())
    assert len(history) == len(load_model(out / "model.npz").history_) == 1
    monkeypatch.setattr(tio, "save_model", real_save)
    assert main(["train", "--resume", str(out), "--sweeps", "2", "--quiet"]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 2


def test_early_stopping_run_saves_the_kept_network(tmp_path, capsys):
    """run.json's final accuracy, the saved model and `tnlearn evaluate` all describe the network the fit kept."""
    from tnlearn.io import load_model

    out = tmp_path / "es"
    assert main(["train", "--dataset", "digits", "--bond-dim", "8", "--sweeps", "4", "--early-stopping",
                 "--n-iter-no-change", "1", "--quiet", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert 1 <= run["kept_sweep"] < len(history) == len(load_model(out).history_)  # it did stop early
    assert run["final_test_accuracy"] == history[run["kept_sweep"] - 1]["test_accuracy"]
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    shown = float(re.search(r"accuracy ([0-9.]+)", capsys.readouterr().out).group(1))
    assert shown == pytest.approx(run["final_test_accuracy"], abs=1e-6)


def test_no_plots_writes_the_results_without_figures(tmp_path):
    out = tmp_path / "np"
    assert main(["train", "--dataset", "digits", "--bond-dim", "4", "--sweeps", "1", "--quiet", "--no-plots",
                 "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"model.npz", "history.json", "run.json"}
    assert not list(out.glob("*.png"))
    assert main(["plot", str(out)]) == 0 and (out / "accuracy.png").is_file()  # drawn later from the history
