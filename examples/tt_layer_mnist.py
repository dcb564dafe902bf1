"""TT-net (Novikov et al. 2015): accuracy and compression against the maximum TT-rank.

The flattened image, zero-padded to a power of two (784 -> 1024 = 4^5 for 28x28,
64 = 4 x 2 x 2 x 2 x 2 for digits), goes through a TT dense layer to a hidden layer four times
as wide (the model's default), a ReLU, and a dense output layer; the TT cores are trained by two-site
sweeps (merge, minibatch Adam on the merged block, truncated-SVD split).  For each
maximum TT-rank the script reports test accuracy, the TT layer's parameters and its
compression against the dense matrix it stands for, writes
``FIGURES_DIR/<dataset>_tt_rank.png`` and prints a Markdown table in the shape of the paper's
MNIST table (rank 1..4: 97.1%..98.2% at compression 6.6e-5..6.7e-4 there).

Examples
--------
::

    python examples/tt_layer_mnist.py --dataset digits
    python examples/tt_layer_mnist.py --dataset fashion-mnist --ranks 1 2 4 --sweeps 2
    python examples/tt_layer_mnist.py --dataset mnist --data-dir ~/data/mnist
    python examples/tt_layer_mnist.py --dataset cifar10 --data-dir DIR   # cifar-10-binary.tar.gz in DIR

CIFAR-10's 32x32x3 = 3,072 inputs (pixel by pixel, three channels each) are padded to
4,096 = 8 x 8 x 4 x 4 x 4 (the figures quoted from the paper for CIFAR-10: max accuracy
0.51 / 0.55 / 0.56 / 0.56 at TT-ranks 1 / 2 / 3 / 4; not yet measured here).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from tnlearn.datasets import load_dataset
from tnlearn.models.tt_net import TTNetClassifier


def plot_rank_table(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = [r for r in rows if r["rank"] != "auto"]
    ranks = [r["rank"] for r in fixed]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(ranks, [100 * r["accuracy"] for r in fixed], "o-", label="fixed maximum rank")
    for r in rows:
        if r["rank"] == "auto":  # drawn at the largest rank it kept
            ax.plot([max(r["ranks"])], [100 * r["accuracy"]], "*", ms=12, color="C3",
                    label=f"automatic (ARD, from {r['max_rank']}): ranks {r['ranks']}")
    for r in rows:
        r = dict(r, rank=max(r["ranks"])) if r["rank"] == "auto" else r
        ax.annotate(f"{r['compression']:.0f}x", (r["rank"], 100 * r["accuracy"]), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=8)
    accs = [100 * r["accuracy"] for r in rows]
    span = max(accs) - min(accs) or 1.0
    ax.set_ylim(min(accs) - 0.15 * span, max(accs) + 0.25 * span)  # room for the labels
    ax.set_xlabel("maximum TT-rank")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sorted(set(ranks) | {max(r["ranks"]) for r in rows if r["rank"] == "auto"}))
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist", "cifar10"], default="digits")
    p.add_argument("--data-dir", default=None, help="directory with the four IDX files")
    p.add_argument("--n-train", type=int, default=None, help="training subset (default: all)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--auto-rank", type=int, default=16, metavar="R",
                   help="add a row whose ranks are learned from R down (rank_prior='ard'); 0: no such row "
                        "(default: 16)")
    p.add_argument("--sweeps", type=int, default=4, help="default: 4 (the model's default)")
    p.add_argument("--epochs-per-bond", type=float, default=None,
                   help="default: the model's 'auto' (half an epoch, at least 100 Adam steps)")
    p.add_argument("--lr-decay", type=float, default=1.0, help="Adam step factor per sweep (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figures-dir", default=os.path.join("figures", "tt_net"))
    args = p.parse_args(argv)

    sweeps, lr_decay = args.sweeps, args.lr_decay
    epochs = args.epochs_per_bond or "auto"
    data = load_dataset(args.dataset, data_dir=args.data_dir, pool=1, n_train=args.n_train, random_state=args.seed)
    X_tr = data.X_train.reshape(len(data.X_train), -1)
    X_te = data.X_test.reshape(len(data.X_test), -1)
    n_cores = TTNetClassifier().n_cores  # the model's (and tnlearn train's) default layout, digits included
    print(f"{data.name}: {len(X_tr)} train / {len(X_te)} test, {X_tr.shape[1]} features, {n_cores} TT cores")

    rows = []
    runs = [(rank, {"max_rank": rank}) for rank in args.ranks]
    if args.auto_rank:
        runs.append(("auto", {"max_rank": args.auto_rank, "rank_prior": "ard"}))
    for rank, kwargs in runs:
        print(f"\n== max TT-rank {rank}" + (f" (learned from {args.auto_rank})" if rank == "auto" else ""))
        clf = TTNetClassifier(n_cores=n_cores, n_sweeps=sweeps, epochs_per_bond=epochs, lr_decay=lr_decay,
                              random_state=args.seed, verbose=1, **kwargs)
        start = time.perf_counter()
        clf.fit(X_tr, data.y_train, eval_set=(X_te, data.y_test))
        seconds = time.perf_counter() - start
        tt = clf.tt_
        rows.append({"rank": rank, "max_rank": kwargs["max_rank"], "accuracy": clf.history_[-1].test_accuracy, "tt_params": tt.n_params,
                     "dense_params": tt.in_features * tt.out_features, "compression": tt.compression,
                     "ranks": tt.ranks, "all_params": clf.n_params_, "seconds": seconds,
                     "shape": f"{'x'.join(map(str, tt.in_shape))} -> {'x'.join(map(str, tt.out_shape))}"})

    os.makedirs(args.figures_dir, exist_ok=True)
    path = os.path.join(args.figures_dir, f"{data.name}_tt_rank.png")
    plot_rank_table(rows, path, f"TT-net, {data.name} ({len(X_tr)} train)\nTT layer {rows[0]['shape']}; labels: compression")
    with open(os.path.join(args.figures_dir, f"{data.name}_tt_rank.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    print("\nfigure:", path)
    print(f"\n{data.name}, {len(X_tr)} training images, {sweeps} sweeps, epochs of Adam per bond: {epochs}, "
          f"step x {lr_decay} per sweep\n")
    print("| max TT-rank | TT ranks | TT-layer params | dense params | compression | rate (TT / dense) "
          "| all params | test accuracy | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        label = f"auto (from {r['max_rank']})" if r["rank"] == "auto" else r["rank"]
        print(f"| {label} | {r['ranks']} | {r['tt_params']} | {r['dense_params']} | {r['compression']:.0f}x | "
              f"{1 / r['compression']:.1e} | {r['all_params']} | **{100 * r['accuracy']:.2f}%** | {r['seconds']:.0f} |")
    return np.array([r["accuracy"] for r in rows])


if __name__ == "__main__":
    main()
