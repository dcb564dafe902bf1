"""Compress a trained dense network into a TT layer and fine-tune it by sweeps (Novikov et al. 2015).

A dense MLP (scikit-learn's ``MLPClassifier``, one ReLU hidden layer of 1024
units) is trained on the flattened images.  For every maximum TT-rank its hidden
layer ``W1`` (784 x 1024, rows zero-padded to 1024 = 4^5) is turned into a
TT-matrix by TT-SVD (:func:`tnlearn.stages.tt.tt_from_dense`), and the network is
scored twice: straight after the compression (the dense network with ``W1``
replaced by its TT approximation) and after ``--sweeps`` sweeps of
:class:`~tnlearn.models.TTNetClassifier` started from it
(``fit(..., init_from=mlp)``).  With ``--scratch`` a TT-net of the same rank
trained from random cores is added for comparison.

Prints a Markdown table (rank, TT parameters, compression = dense parameters /
TT parameters, accuracy dense / compressed / fine-tuned) and writes
``OUT/<dataset>_dense_to_tt.png`` (accuracy against compression) and
``OUT/<dataset>_dense_to_tt.json`` (one pair per data set: a digits run does not replace
the Fashion-MNIST figure the README shows).

Examples
--------
::

    python examples/compress_mlp.py --dataset digits --hidden 256 --ranks 1 2 4 8
    python examples/compress_mlp.py --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist --scratch
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings

import numpy as np

from tnlearn.datasets import flatten_images, load_dataset
from tnlearn.models.tt_net import TTNetClassifier
from tnlearn.stages.tt import factorize, tt_from_dense


def compressed_accuracy(mlp, in_shape, hidden_shape, rank, X, y):
    """Test accuracy of ``mlp`` with its hidden layer replaced by a TT-SVD of maximum rank ``rank``."""
    W1, b1, W2, b2 = mlp.coefs_[0], mlp.intercepts_[0], mlp.coefs_[1], mlp.intercepts_[1]
    padded = np.zeros((math.prod(in_shape), W1.shape[1]))
    padded[: W1.shape[0]] = W1
    tt, info = tt_from_dense(padded, in_shape, hidden_shape, max_bond=rank)
    Xp = np.zeros((len(X), padded.shape[0]))
    Xp[:, : X.shape[1]] = X
    logits = np.maximum(tt.forward(Xp) + b1, 0) @ W2 + b2
    return float(np.mean(mlp.classes_[np.argmax(logits, axis=1)] == y)), tt, info


def figure_title(dataset, hidden, n_train):
    return f"{dataset}: dense MLP ({hidden} hidden) -> TT layer ({n_train:,} training images)"


def plot(rows, dense_acc, path, title):
    """Two panels: every curve on the full accuracy range, and a zoom on the trained ones."""
    import matplotlib
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comp = [r["compression"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, zoom in zip(axes, (False, True)):
        ax.axhline(100 * dense_acc, color="k", lw=1, ls=":", label="dense MLP")
        if not zoom:
            ax.plot(comp, [100 * r["compressed"] for r in rows], "s--", color="C1",
                    label="TT-SVD of the dense layer (no training)")
        ax.plot(comp, [100 * r["fine_tuned"] for r in rows], "o-", color="C0", label="TT-SVD, then sweeps")
        if all("scratch" in r for r in rows):
            ax.plot(comp, [100 * r["scratch"] for r in rows], "^-.", color="C2", label="sweeps from random cores")
        for r in rows:
            ax.annotate(f"r={r['rank']}", (r["compression"], 100 * r["fine_tuned"]), textcoords="offset points",
                        xytext=(0, -12), ha="center", fontsize=8)
        ax.set_xscale("log")
        # plain numbers (20, 50, 100, ...): matplotlib's minor labels overprint on a range of a decade or two
        narrow = max(comp) / min(comp) < 100
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5) if narrow else (1,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("compression of the hidden layer (dense / TT parameters)")
        ax.set_ylabel("test accuracy (%)")
        if zoom:
            trained = [100 * r[k] for r in rows for k in ("fine_tuned", "scratch") if k in r]
            ax.set_ylim(min(trained) - 1.5, max(trained + [100 * dense_acc]) + 1)
            ax.set_title("zoom: trained networks", fontsize=9)
        else:
            ax.set_ylim(0, 100)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", choices=("digits", "fashion-mnist", "mnist"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n-train", type=int, default=None, help="stratified subset of the training images")
    p.add_argument("--hidden", type=int, default=1024, help="hidden units of the dense MLP (a power of 2)")
    p.add_argument("--cores", type=int, default=5, help="TT cores (default: 5: 1024 = 4^5)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--sweeps", type=int, default=2, help="fine-tuning sweeps (default: 2)")
    p.add_argument("--scratch", action="store_true", help="also train each rank from random cores")
    p.add_argument("--out", default="figures", help="directory of the figure and the JSON table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot-only", metavar="JSON", default=None,
                   help="redraw OUT/<dataset>_dense_to_tt.png from a JSON table written earlier, and exit")
    args = p.parse_args(argv)
    if args.plot_only:
        with open(args.plot_only) as fh:
            saved = json.load(fh)
        title = figure_title(saved["dataset"], saved["hidden"], saved["n_train"])
        os.makedirs(args.out, exist_ok=True)
        plot(saved["rows"], saved["dense_accuracy"], os.path.join(args.out, f"{saved['dataset']}_dense_to_tt.png"),
             title)
        return 0

    from sklearn.neural_network import MLPClassifier

    ds = load_dataset(args.dataset, data_dir=args.data_dir, pool=1, n_train=args.n_train, random_state=args.seed)
    X, Xt = flatten_images(ds.X_train), flatten_images(ds.X_test)
    y, yt = ds.y_train, ds.y_test
    in_shape = factorize(X.shape[1], args.cores)
    hidden_shape = factorize(args.hidden, args.cores)
    if math.prod(hidden_shape) != args.hidden:
        p.error(f"--hidden {args.hidden} is not a power of two that splits into {args.cores} factors")

    t = time.perf_counter()
    mlp = MLPClassifier(hidden_layer_sizes=(args.hidden,), early_stopping=True, random_state=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp.fit(X, y)
    dense_acc = float(mlp.score(Xt, yt))
    dense_params = X.shape[1] * args.hidden
    print(f"dense MLP {X.shape[1]}-{args.hidden}-{len(mlp.classes_)}: test accuracy {100 * dense_acc:.2f}% "
          f"({mlp.n_iter_} epochs, {time.perf_counter() - t:.0f} s); hidden layer {dense_params:,} parameters; "
          f"TT shape {in_shape} x {hidden_shape}", flush=True)

    rows = []
    for rank in args.ranks:
        acc0, tt, info = compressed_accuracy(mlp, in_shape, hidden_shape, rank, Xt, yt)
        t = time.perf_counter()
        tuned = TTNetClassifier(in_shape=in_shape, hidden_shape=hidden_shape, max_rank=rank, n_sweeps=args.sweeps,
                                random_state=args.seed).fit(X, y, init_from=mlp, eval_set=(Xt, yt))
        row = {"rank": rank, "tt_params": tt.n_params, "compression": dense_params / tt.n_params,
               "relative_error": info["relative_error"], "compressed": acc0,
               "fine_tuned": tuned.history_[-1].test_accuracy,
               "fine_tuned_per_sweep": tuned.history_.column("test_accuracy"),
               "fine_tune_seconds": time.perf_counter() - t}
        if args.scratch:
            scratch = TTNetClassifier(in_shape=in_shape, hidden_shape=hidden_shape, max_rank=rank,
                                      n_sweeps=args.sweeps, random_state=args.seed).fit(X, y, eval_set=(Xt, yt))
            row["scratch"] = scratch.history_[-1].test_accuracy
        rows.append(row)
        extra = f", from random cores {100 * row['scratch']:.2f}%" if "scratch" in row else ""
        print(f"rank {rank}: {tt.n_params:,} TT parameters ({row['compression']:.0f}x), relative error "
              f"{info['relative_error']:.3f}: compressed {100 * acc0:.2f}% -> fine-tuned "
              f"{100 * row['fine_tuned']:.2f}%{extra} ({row['fine_tune_seconds']:.0f} s)", flush=True)

    scratch_col = " from random cores |" if args.scratch else ""
    print(f"\n| max TT-rank | TT parameters | compression | compressed (TT-SVD) | fine-tuned ({args.sweeps} sweeps) |"
          f"{scratch_col}\n|---|---|---|---|---|{'---|' if args.scratch else ''}")
    print(f"| dense | {dense_params:,} | 1x | {100 * dense_acc:.2f}% | - |{' - |' if args.scratch else ''}")
    for r in rows:
        extra = f" {100 * r['scratch']:.2f}% |" if "scratch" in r else ""
        print(f"| {r['rank']} | {r['tt_params']:,} | {r['compression']:.0f}x | {100 * r['compressed']:.2f}% | "
              f"{100 * r['fine_tuned']:.2f}% |{extra}")
    os.makedirs(args.out, exist_ok=True)
    title = figure_title(ds.name, args.hidden, len(y))
    stem = os.path.join(args.out, f"{ds.name}_dense_to_tt")
    plot(rows, dense_acc, stem + ".png", title)
    with open(stem + ".json", "w") as fh:
        json.dump({"dataset": ds.name, "n_train": len(y), "dense_accuracy": dense_acc, "hidden": args.hidden,
                   "in_shape": list(in_shape), "hidden_shape": list(hidden_shape), "rows": rows}, fh, indent=1)
    print(f"wrote {stem}.png and {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
