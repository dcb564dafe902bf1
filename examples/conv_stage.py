"""Compare a plain MPS classifier with conv-mps (a tensor-network conv stage under the MPS head).

Both models see a grid of the same size, so the head has the same number of sites
and the same bond dimension:

* ``mps``: the image average-pooled by 2 (28x28 -> 14x14, or 8x8 -> 4x4 for digits),
  each pooled pixel embedded by the trig map (local dimension 2);
* ``conv-mps c=C``: the full-resolution image cut into 2x2 patches, each patch's
  4 pixels mapped by one shared 4-site conv MPS to C normalised channels (local
  dimension C), the conv MPS trained by sweeps together with the head.

With C = 2 the two heads have exactly the same size, so the comparison is
learned pooling against fixed average pooling.  ``--full-mps`` adds a plain MPS on
the full-resolution image (4x the sites; the default for digits, where it is cheap).  Writes one run directory per model
(``history.json``), ``FIGURES_DIR/accuracy.png`` and prints a Markdown table.

Examples
--------
::

    python examples/conv_stage.py --dataset digits --bond-dim 16 --sweeps 4
    python examples/conv_stage.py --dataset fashion-mnist --n-train 20000 --bond-dim 10 --channels 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import time

from tnlearn import MPSClassifier
from tnlearn.datasets import avg_pool, load_dataset
from tnlearn.models.conv_mps import ConvMPSClassifier
from tnlearn.plotting import write_run_plots


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist"], default="digits")
    p.add_argument("--data-dir", default=None, help="directory with the four IDX files")
    p.add_argument("--n-train", type=int, default=None, help="training subset (default: all)")
    p.add_argument("--bond-dim", type=int, default=16, help="head bond dimension of every model")
    p.add_argument("--channels", type=int, nargs="+", default=[2, 4], help="conv channels to try")
    p.add_argument("--sweeps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--full-mps", action=argparse.BooleanOptionalAction, default=None,
                   help="also train a plain MPS on the unpooled image (default: on for digits only)")
    p.add_argument("--figures-dir", default=None, help="default: figures/conv_stage/DATASET")
    args = p.parse_args(argv)

    data = load_dataset(args.dataset, data_dir=args.data_dir, pool=1, n_train=args.n_train, random_state=args.seed)
    n_tr, n_te = len(data.X_train), len(data.X_test)
    full_tr, full_te = data.X_train.reshape(n_tr, -1), data.X_test.reshape(n_te, -1)
    pooled_tr = avg_pool(data.X_train, 2).reshape(n_tr, -1)
    pooled_te = avg_pool(data.X_test, 2).reshape(n_te, -1)
    print(f"{data.name}: {n_tr} train / {n_te} test, images {data.image_shape}, head grid "
          f"{data.image_shape[0] // 2}x{data.image_shape[1] // 2}")

    models = [("mps (pooled)", MPSClassifier(max_bond=args.bond_dim, n_sweeps=args.sweeps, random_state=args.seed,
                                             verbose=1), pooled_tr, pooled_te)]
    full_mps = args.full_mps if args.full_mps is not None else data.name == "digits"
    if full_mps:
        models.append(("mps (full resolution)", MPSClassifier(max_bond=args.bond_dim, n_sweeps=args.sweeps,
                                                              random_state=args.seed, verbose=1), full_tr, full_te))
    for c in args.channels:
        clf = ConvMPSClassifier(n_channels=c, max_bond=args.bond_dim, n_sweeps=args.sweeps,
                                random_state=args.seed, verbose=1)
        models.append((f"conv-mps c={c}", clf, full_tr, full_te))

    rows, histories, labels = [], [], []
    for name, clf, X_tr, X_te in models:
        print(f"\n== {name}")
        start = time.perf_counter()
        clf.fit(X_tr, data.y_train, eval_set=(X_te, data.y_test))
        seconds = time.perf_counter() - start
        head = clf.head_.n_params
        conv = clf.conv_.net.n_params if hasattr(clf, "conv_") else 0
        accs = [r.test_accuracy for r in clf.history_]
        rows.append((name, head, conv, accs, seconds / len(accs)))
        histories.append(clf.history_)
        labels.append(name)
        slug = "".join(ch for ch in name if ch.isalnum() or ch == "-")
        run_dir = os.path.join(args.runs_dir, f"{data.name}-{slug}-m{args.bond_dim}")
        os.makedirs(run_dir, exist_ok=True)
        clf.history_.save(os.path.join(run_dir, "history.json"))
        with open(os.path.join(run_dir, "run.json"), "w") as fh:
            json.dump({"dataset": data.name, "model": name, "bond_dim": args.bond_dim, "n_train": n_tr,
                       "sweeps": args.sweeps, "seed": args.seed, "seconds": seconds}, fh, indent=1)

    figures_dir = args.figures_dir or os.path.join("figures", "conv_stage", data.name)
    paths = write_run_plots(histories, labels, figures_dir)
    print("\nfigures:", *paths, sep="\n  ")
    print(f"\n{data.name}, {n_tr} training images, head bond dimension {args.bond_dim}, {args.sweeps} sweeps\n")
    print("| model | head sites | head params | conv params | test accuracy per sweep | final | s / sweep |")
    print("|---|---|---|---|---|---|---|")
    for (name, head, conv, accs, per), clf in zip(rows, [m[1] for m in models]):
        per_sweep = " / ".join(f"{100 * a:.1f}" for a in accs)
        print(f"| {name} | {clf.head_.n_sites} | {head} | {conv} | {per_sweep} | **{100 * accs[-1]:.2f}%** | {per:.1f} |")


if __name__ == "__main__":
    main()
