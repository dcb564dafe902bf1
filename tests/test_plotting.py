"""Tests for tnlearn.plotting (synthetic histories; Agg canvas, no pyplot state left behind)."""

import numpy as np
import pytest

from tnlearn.history import History, SweepRecord
from tnlearn.plotting import (plot_accuracy, plot_bond_dims, plot_entanglement, plot_truncation,
                              write_run_plots)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_history(n_sweeps=3, n_bonds=9, max_bond=4, with_test=True):
    records = []
    for s in range(1, n_sweeps + 1):
        records.append(SweepRecord(
            sweep=s, loss=1.0 / s, train_accuracy=0.5 + 0.1 * s,
            test_accuracy=(0.45 + 0.1 * s) if with_test else None,
            max_truncation_error=10.0 ** -s, mean_truncation_error=10.0 ** (-s - 1),
            bond_dims=[min(2 ** min(b + 1, n_bonds - b), max_bond) for b in range(n_bonds)],
            seconds=0.1, truncation_errors=[10.0 ** -s] * (2 * n_bonds)))
    return History(records)


@pytest.fixture
def ax():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.add_subplot()


@pytest.mark.parametrize("n_runs", [1, 3])
def test_plot_accuracy_two_lines_per_run(ax, n_runs):
    histories = [make_history(max_bond=2 + i) for i in range(n_runs)]
    labels = [f"m={2 + i}" for i in range(n_runs)]
    assert plot_accuracy(histories, labels, ax=ax) is ax
    lines = ax.get_lines()
    assert len(lines) == 2 * n_runs
    assert [line.get_linestyle() for line in lines] == ["-", "--"] * n_runs
    assert lines[0].get_color() == lines[1].get_color() != (lines[2].get_color() if n_runs > 1 else None)
    np.testing.assert_allclose(lines[0].get_ydata(), [0.6, 0.7, 0.8])
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    assert ax.get_legend() is not None


def test_plot_accuracy_without_test_set(ax):
    plot_accuracy(make_history(with_test=False), "run", ax=ax)
    assert len(ax.get_lines()) == 1


def test_plot_truncation_log_axis(ax):
    plot_truncation([make_history(), make_history(n_sweeps=5)], ["a", "b"], ax=ax)
    assert ax.get_yscale() == "log"
    assert len(ax.get_lines()) == 2
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [1e-1, 1e-2, 1e-3])


def history_with_errors(errors, bond_dims=(2, 4, 2)):
    return History([SweepRecord(sweep=s, loss=0.1, train_accuracy=0.9, test_accuracy=0.8, max_truncation_error=e,
                                mean_truncation_error=e / 10, bond_dims=list(bond_dims), seconds=0.1)
                    for s, e in enumerate(errors, start=1)])


def labelled_ticks_in_view(ax, which="y"):
    """The texts of the major tick labels that lie within the axis' limits (after a draw)."""
    ax.figure.canvas.draw()
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
    return [label.get_text() for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if lo * (1 - 1e-9) <= loc <= hi * (1 + 1e-9) and label.get_text()]


@pytest.mark.parametrize("errors", [[2e-3, 3e-3, 5e-3], [6e-3, 1.5e-2], [1e-2], [1e-1, 1e-2, 1e-3]],
                         ids=["within-a-decade", "across-one-power", "single-value", "three-decades"])
def test_truncation_log_axis_labels_two_ticks(ax, errors):
    plot_truncation(history_with_errors(errors), ax=ax)
    labels = labelled_ticks_in_view(ax)
    assert len(labels) >= 2, labels
    lo, hi = ax.get_ylim()
    assert lo <= min(errors) and max(errors) <= hi  # every point stays in view


def test_stage_truncation_axis_labels_two_ticks():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tnlearn.plotting import plot_stages

    staged = History([SweepRecord(sweep=k, loss=0.1, train_accuracy=0.9, test_accuracy=0.8, max_truncation_error=1e-3,
                                  mean_truncation_error=1e-4, bond_dims=[2, 4, 2], seconds=1.0,
                                  stages={"conv": {"loss_before": 0.3 / k, "loss_after": 0.2 / k,
                                                   "max_truncation_error": 2e-4 * k, "bond_dims": [2, 4, 2]}})
                      for k in (1, 2)])
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = plot_stages(staged, ax=fig.add_subplot())
    (twin,) = [other for other in fig.axes if other is not ax]
    assert twin.get_yscale() == "log"
    assert len(labelled_ticks_in_view(twin)) >= 2


def test_tt_rank_plot_has_integer_ticks(ax):
    """A TT-net's ranks (here all 2 over 2 bonds): no 0.5 or 2.5 ticks on either axis."""
    from matplotlib.ticker import MaxNLocator

    plot_bond_dims(history_with_errors([1e-3], bond_dims=[2, 2]), "tt-net rank 2", ax=ax)
    assert isinstance(ax.yaxis.get_major_locator(), MaxNLocator)
    for which in ("x", "y"):
        ax.figure.canvas.draw()
        ticks = ax.get_yticks() if which == "y" else ax.get_xticks()
        assert len(labelled_ticks_in_view(ax, which)) >= 2
        assert all(float(t).is_integer() for t in ticks), (which, ticks)


def test_plot_bond_dims_profile(ax):
    h = make_history(n_bonds=9, max_bond=4)
    plot_bond_dims([h], ["m=4"], ax=ax)
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == list(range(1, 10))
    assert list(line.get_ydata()) == h[-1].bond_dims


def test_plot_entanglement(ax):
    entropies = [np.linspace(0, 1, 7), np.array([0.1, 0.5, 0.2])]
    plot_entanglement(entropies, ["a", "b"], ax=ax)
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [7, 3]
    assert "ntropy" in ax.get_ylabel()


def test_plot_creates_axes_when_none():
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless test runs; the library itself never sets a backend
    import matplotlib.pyplot as plt

    ax = plot_accuracy(make_history())
    try:
        assert len(ax.get_lines()) == 2
    finally:
        plt.close(ax.figure)


@pytest.mark.parametrize("histories, labels, exc", [
    ([], [], ValueError),
    ([make_history()], ["a", "b"], ValueError),
    ([History()], ["empty"], ValueError),
    (["not a history"], ["a"], TypeError),
])
def test_bad_input(ax, histories, labels, exc):
    with pytest.raises(exc):
        plot_accuracy(histories, labels, ax=ax)


def test_write_run_plots(tmp_path):
    out = tmp_path / "plots"
    paths = write_run_plots([make_history(), make_history(max_bond=8)], ["m=4", "m=8"], out)
    assert [p.rsplit("/", 1)[-1] for p in map(str, paths)] == ["accuracy.png", "truncation.png",
                                                                  "bond_dims.png"]
    for p in paths:
        data = open(p, "rb").read()
        assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_stage_plot_for_multi_stage_runs(tmp_path):
    from tnlearn.history import History, SweepRecord
    from tnlearn.plotting import plot_stages, write_run_plots

    def record(k, stages):
        return SweepRecord(sweep=k, loss=0.1, train_accuracy=0.9, test_accuracy=0.8, max_truncation_error=1e-3,
                           mean_truncation_error=1e-4, bond_dims=[2, 4, 2], seconds=1.0, stages=stages)

    staged = History([record(k, {"conv": {"loss_before": 0.3 / k, "loss_after": 0.2 / k,
                                          "max_truncation_error": 1e-4 * k, "bond_dims": [2, 4, 2]}})
                      for k in (1, 2)])
    plain = History([record(1, {}), record(2, {})])
    paths = write_run_plots([staged, plain], ["conv", "mps"], tmp_path)
    assert paths[-1].endswith("stages.png") and (tmp_path / "stages.png").stat().st_size > 0
    ax = plot_stages(staged)
    after = ax.get_lines()[0]
    assert list(after.get_ydata()) == [0.2, 0.1]
    assert write_run_plots(plain, None, tmp_path / "plain")[-1].endswith("bond_dims.png")  # no stage plot
    with pytest.raises(ValueError, match="only multi-stage models"):
        plot_stages(plain)


def test_one_sweep_gets_one_whole_number_tick():
    """A run of one sweep: the sweep axis says 1, not 0.945 ... 1.065."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tnlearn.plotting import plot_accuracy

    one = History([SweepRecord(sweep=1, loss=0.1, train_accuracy=0.9, test_accuracy=0.8, max_truncation_error=1e-3,
                               mean_truncation_error=1e-4, bond_dims=[2], seconds=1.0)])
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = plot_accuracy(one, ax=fig.add_subplot())
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1"]
