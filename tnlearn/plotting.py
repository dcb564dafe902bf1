"""Training plots drawn from :class:`~tnlearn.history.History` objects (never from a model).

matplotlib is imported inside the functions, so ``import tnlearn`` stays light and
never selects a backend.  Every ``plot_*`` function draws on ``ax`` when given
(returning it) or on a new pyplot figure; :func:`write_run_plots` writes PNG
files through the Agg canvas without touching pyplot's global state.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["plot_accuracy", "plot_truncation", "plot_bond_dims", "plot_entanglement", "plot_stages", "plot_ranks",
           "write_run_plots"]

_FIGSIZE = (6.0, 4.0)


def _runs(items, labels, what):
    """Normalise one item or a list of items and their labels to two equal-length lists."""
    from tnlearn.history import History

    if isinstance(items, History) or (what == "entropies" and len(items) and np.isscalar(items[0])):
        items = [items]  # a single run
    items = list(items)
    if not items:
        raise ValueError(f"{what} is empty; pass at least one run")
    if labels is None:
        labels = [f"run {i + 1}" for i in range(len(items))] if len(items) > 1 else [None]
    elif isinstance(labels, str):
        labels = [labels]
    labels = list(labels)
    if len(labels) != len(items):
        raise ValueError(f"got {len(items)} {what} but {len(labels)} labels; pass one label per run")
    if what == "histories":
        for label, h in zip(labels, items):
            if not isinstance(h, History):
                raise TypeError(f"histories must hold History objects, got {type(h).__name__}")
            if len(h) == 0:
                name = f" {label!r}" if label else ""
                raise ValueError(f"history{name} has no sweep records to plot")
    return items, labels


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=_FIGSIZE, layout="constrained")
    return ax


def _log_values(values):
    """``values`` as floats for a log axis: zeros (nothing truncated) become gaps (NaN)."""
    out = np.asarray(values, dtype=float)
    out[out <= 0] = np.nan
    return out


def _readable_log_axis(ax):
    """Widen a log y axis to whole decades when fewer than two of its labelled ticks are in view.

    A log axis labels its decades (``10^-3``, ``10^-2``, ...): values that lie
    within one decade, or just across one power of ten, would show one labelled
    tick or none, and the scale could not be read.  The limits then become the
    powers of ten around the data, so both ends are labelled.  Call it after
    the data are drawn (it fixes the limits).
    """
    lo, hi = ax.get_ylim()
    if not 0 < lo < hi < np.inf:
        return
    ticks = np.asarray(ax.yaxis.get_major_locator().tick_values(lo, hi))
    if np.count_nonzero((ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))) >= 2:
        return
    bottom = np.floor(np.log10(lo) + 1e-9)
    top = max(np.ceil(np.log10(hi) - 1e-9), bottom + 1)
    ax.set_ylim(10.0**bottom, 10.0**top)


def _finish(ax, xlabel, ylabel, title, integer_x=True, integer_y=False):
    """Labels, title, grid and legend; integer ticks on axes of counts (sweeps, bonds, bond dimensions)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if integer_x:
        xs = {float(x) for line in ax.get_lines() for x in np.atleast_1d(line.get_xdata()) if np.isfinite(x)}
        if len(xs) == 1:  # one sweep: MaxNLocator would fall back to fractional ticks around it
            ax.set_xticks(sorted(xs))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if integer_y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="major", alpha=0.35, linewidth=0.6)
    if any(line.get_label() and not line.get_label().startswith("_") for line in ax.get_lines()):
        ax.legend(frameon=False, fontsize="small")
    return ax


def plot_accuracy(histories, labels=None, ax=None):
    """Train (solid) and test (dashed) accuracy against the sweep number.

    Parameters
    ----------
    histories : History or list of History
        One per run; each run gets one colour.
    labels : str or list of str, optional
        One per run (default ``"run 1"``, ``"run 2"``, ...; none for a single run).
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; default a new pyplot figure.

    Returns
    -------
    matplotlib.axes.Axes
        With two lines per run (one when a run has no test accuracies).
    """
    histories, labels = _runs(histories, labels, "histories")
    ax = _axes(ax)
    for i, (h, label) in enumerate(zip(histories, labels)):
        colour, prefix = f"C{i % 10}", f"{label}: " if label else ""
        sweeps = h.column("sweep")
        ax.plot(sweeps, h.column("train_accuracy"), "-o", color=colour, ms=4, label=f"{prefix}train")
        test = [np.nan if a is None else a for a in h.column("test_accuracy")]
        if not np.all(np.isnan(test)):
            ax.plot(sweeps, test, "--s", color=colour, ms=4, label=f"{prefix}test")
    return _finish(ax, "Sweep", "Accuracy", "Classification accuracy")


def plot_truncation(histories, labels=None, ax=None):
    """Largest SVD truncation error (discarded weight) of each sweep, on a log axis.

    Parameters
    ----------
    histories : History or list of History
    labels : str or list of str, optional
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        With one line per run.  Sweeps that truncated nothing (error 0) have no
        point on the log axis.  The axis shows at least two labelled powers of
        ten (its limits widen to whole decades when the errors lie within one).
    """
    histories, labels = _runs(histories, labels, "histories")
    ax = _axes(ax)
    for i, (h, label) in enumerate(zip(histories, labels)):
        err = _log_values(h.column("max_truncation_error"))
        ax.plot(h.column("sweep"), err, "-o", color=f"C{i % 10}", ms=4, label=label)
    ax.set_yscale("log")
    _readable_log_axis(ax)
    return _finish(ax, "Sweep", "Max. truncation error", "Truncation error per sweep")


def plot_bond_dims(histories, labels=None, ax=None):
    """Bond-dimension profile along the chain after each run's last sweep.

    Parameters
    ----------
    histories : History or list of History
    labels : str or list of str, optional
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        With one step line per run; bond ``b`` joins sites ``b - 1`` and ``b``.
        Both axes have integer ticks (a TT-net's ranks, e.g. all 2, never show 2.5).
    """
    histories, labels = _runs(histories, labels, "histories")
    ax = _axes(ax)
    for i, (h, label) in enumerate(zip(histories, labels)):
        dims = h[-1].bond_dims
        ax.plot(np.arange(1, len(dims) + 1), dims, drawstyle="steps-mid", color=f"C{i % 10}",
                lw=1.5, label=label)
    ax.set_ylim(bottom=0)
    return _finish(ax, "Bond", "Bond dimension", "Bond dimensions after the last sweep", integer_y=True)


def plot_entanglement(entropies, labels=None, ax=None):
    """Entanglement (von Neumann) entropy across each bond of the chain.

    Parameters
    ----------
    entropies : array, shape (n_bonds,), or list of such arrays
        One 1-D array per run, in bits (base-2 logarithm, as quimb's
        ``MatrixProductState.entropy`` returns).
    labels : str or list of str, optional
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        With one line per run.
    """
    entropies, labels = _runs(entropies, labels, "entropies")
    ax = _axes(ax)
    for i, (s, label) in enumerate(zip(entropies, labels)):
        s = np.asarray(s, dtype=float)
        if s.ndim != 1:
            raise ValueError(f"each entropy profile must be 1-D (n_bonds,), got shape {s.shape}")
        ax.plot(np.arange(1, len(s) + 1), s, "-", marker=".", color=f"C{i % 10}", label=label)
    ax.set_ylim(bottom=0)
    return _finish(ax, "Bond", "Entanglement entropy (bits)", "Entanglement entropy along the chain")


def _chained(history, names):
    """Whether every stage starts from the loss the stage before it left (stages trained one after another)."""
    return len(names) > 1 and all(
        np.isclose(r.stages[b]["loss_before"], r.stages[a]["loss_after"], rtol=1e-9, atol=0)
        for r in history.records for a, b in zip(names, names[1:]) if a in r.stages and b in r.stages)


def plot_stages(histories, labels=None, ax=None):
    """Loss of every lower stage's sweep (before -> after) and its largest truncation error.

    Multi-stage models record, per sweep, ``stages[name]`` with ``loss_before``,
    ``loss_after`` and ``max_truncation_error`` (e.g. the conv stage of
    :class:`~tnlearn.models.ConvMPSClassifier`).  Drawn: the stage's loss after its
    sweep (solid, circles) and before it (dotted, crosses), so each sweep's gain
    is the vertical gap; a second axis (right, log) carries the truncation error.

    Parameters
    ----------
    histories : History or list of History
    labels : str or list of str, optional
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    histories, labels = _runs(histories, labels, "histories")
    ax = _axes(ax)
    twin = ax.twinx()
    drawn = truncated = False
    losses = []
    line = 0  # one colour per (run, stage)
    for h, label in zip(histories, labels):
        names = list(dict.fromkeys(name for r in h.records for name in r.stages))  # in training order
        chained = _chained(h, names)
        for k, name in enumerate(names):
            rows = [(r.sweep, r.stages[name]) for r in h.records if name in r.stages]
            sweeps = [sw for sw, _ in rows]
            tag = f"{label}: {name}" if label and len(histories) > 1 else name
            color = f"C{line % 10}"
            line += 1
            losses += [st[key] for _, st in rows for key in ("loss_before", "loss_after")]
            ax.plot(sweeps, [st["loss_after"] for _, st in rows], "-o", color=color, ms=4, label=f"{tag} loss after")
            if not chained or k == 0:  # a chain's later "before" is the stage below's "after": drawn once
                ax.plot(sweeps, [st["loss_before"] for _, st in rows], ":x", color=color, ms=4,
                        label=f"{tag} loss before" if not chained else "loss before the sweep")
            err = _log_values([st["max_truncation_error"] for _, st in rows])
            if np.isfinite(err).any():
                twin.plot(sweeps, err, "--s", color=color, ms=3, alpha=0.6)
                truncated = True
            drawn = True
    if not drawn:
        raise ValueError("no run has per-stage records (history_[k].stages): only multi-stage models have them")
    finite = np.asarray([v for v in losses if np.isfinite(v)], dtype=float)
    if finite.size and finite.min() > 0 and finite.max() > 50 * finite.min():  # e.g. 4.7 at the start, 1e-3 later
        ax.set_yscale("log")
    if truncated:
        twin.set_yscale("log")
        _readable_log_axis(twin)
        twin.set_ylabel("Max. truncation error (dashed)")
        # the dashed lines live on the right axis: a legend entry on the left one names them
        ax.plot([], [], "--s", color="0.5", ms=3, alpha=0.6, label="max. truncation error (right axis)")
        title = "Stages: loss before / after each stage's sweep"
    else:
        twin.set_axis_off()
        title = "Stages: loss before / after each stage's sweep (no truncation)"
    if len(histories) == 1 and labels[0]:
        title = f"{title}\n{labels[0]}"
    return _finish(ax, "Sweep", "Stage loss", title)


def plot_ranks(histories, labels=None, ax=None):
    """TT-ranks (every bond) and compression of a TT layer against the sweep.

    Records of TT-net runs carry ``tt_ranks`` and ``compression`` (dense
    parameters over TT parameters).  Drawn: each bond's rank (thin lines,
    left axis, integer ticks) and the compression (thick dashed line, right
    axis, log scale), so a learned rank (``rank_prior="ard"``) shows where it
    settles and what it saves.

    Parameters
    ----------
    histories : History or list of History
    labels : str or list of str, optional
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        When no run has TT records.
    """
    histories, labels = _runs(histories, labels, "histories")
    ax = _axes(ax)
    twin = ax.twinx()
    drawn, top = False, 1
    single = len(histories) == 1  # one run: a colour per bond; several: a colour per run, a marker per bond
    markers = "o^sDv<>p*h"
    for i, (h, label) in enumerate(zip(histories, labels)):
        rows = [r for r in h.records if r.tt_ranks is not None]
        if not rows:
            continue
        color = f"C{i % 10}"
        sweeps = [r.sweep for r in rows]
        ranks = np.array([r.tt_ranks for r in rows])
        for b in range(ranks.shape[1]):
            ax.plot(sweeps, ranks[:, b], "-", marker=markers[b % len(markers)], ms=4, lw=1,
                    color=f"C{(b + 1) % 10}" if single else color,
                    label=f"bond {b + 1}" if single else f"{label}: bond {b + 1}")
        comp = [r.compression for r in rows]
        twin.plot(sweeps, comp, "--", color="k" if single else color, lw=2,
                  label=f"{label}: compression" if label else "compression")
        # the last compression as a number: a log axis between two decades cannot be read to 47x
        twin.annotate(f"{comp[-1]:,.0f}x", (sweeps[-1], comp[-1]), textcoords="offset points", xytext=(4, 4),
                      fontsize=8, color="k" if single else color)
        top = max(top, int(ranks.max()))
        drawn = True
    if not drawn:
        raise ValueError("no run has TT-layer records (history_[k].tt_ranks): only TT-net runs have them")
    twin.set_yscale("log")
    _readable_log_axis(twin)
    twin.set_ylabel("Compression (dense / TT parameters, dashed)")
    ax.set_ylim(0, 1.45 * top + 0.5)  # head room: the legend sits above the rank lines, not on them
    _finish(ax, "Sweep", "TT-rank of each bond", "TT-ranks and compression per sweep", integer_y=True)
    handles, names = ax.get_legend_handles_labels()
    more, more_names = twin.get_legend_handles_labels()
    # one legend for both axes, in rows across the head room above the rank lines
    ax.legend(handles + more, names + more_names, loc="upper left", ncol=min(4, len(names + more_names)),
              frameon=False, fontsize="small")
    return ax


def _save(plot, items, labels, out_dir, name):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_FIGSIZE, layout="constrained")
    FigureCanvasAgg(fig)
    plot(items, labels, ax=fig.add_subplot())
    path = os.path.join(os.fspath(out_dir), f"{name}.png")
    fig.savefig(path, dpi=150)
    return path


def write_run_plots(histories, labels=None, out_dir=".", entropies=None):
    """Write ``accuracy.png``, ``truncation.png`` and ``bond_dims.png`` into ``out_dir``.

    Also ``entanglement.png`` when ``entropies`` are given, ``stages.png``
    (:func:`plot_stages`) when any run has per-stage records, and ``ranks.png``
    (:func:`plot_ranks`) when any run has TT-layer records.

    Parameters
    ----------
    histories : History or list of History
    labels : str or list of str, optional
    out_dir : str or path-like
        Created if missing; existing files of these names are replaced.
    entropies : list of array, optional
        One entanglement profile per run (see :func:`plot_entanglement`);
        when given, ``entanglement.png`` is written too.

    Returns
    -------
    list of str
        The paths, in the order above.
    """
    histories, labels = _runs(histories, labels, "histories")
    os.makedirs(out_dir, exist_ok=True)
    paths = [_save(plot, histories, labels, out_dir, name)
             for name, plot in (("accuracy", plot_accuracy), ("truncation", plot_truncation),
                                ("bond_dims", plot_bond_dims))]
    if entropies is not None:
        paths.append(_save(plot_entanglement, list(entropies), labels, out_dir, "entanglement"))
    if any(r.stages for h in histories for r in h.records):
        paths.append(_save(plot_stages, histories, labels, out_dir, "stages"))
    if any(r.tt_ranks is not None for h in histories for r in h.records):
        paths.append(_save(plot_ranks, histories, labels, out_dir, "ranks"))
    return paths
