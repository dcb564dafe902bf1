"""The protocol that chooses ``MPSClassifier``'s defaults: candidates x data sets x bond dimensions.

A default must be best or near best on average *and* never let the loss rise or
the accuracy collapse anywhere in the table (``../shared/LEARNING.md``).  This
script trains every candidate configuration on every data set at every bond
dimension and prints one table: test accuracy after each sweep, best and final
accuracy, the recorded loss per sweep, rejected bond updates, seconds, and the
two faults the protocol forbids:

* ``loss+``: a sweep whose recorded loss rose by more than 1% over the previous one;
* ``acc-``: a sweep whose test accuracy fell more than 1 point below the previous one.

Data sets (``--datasets``):

* ``digits8`` — scikit-learn's 8x8 digits, 1,347 train / 450 test;
* ``digits14`` — the same digits upscaled to 14x14 (``scipy.ndimage.zoom``, linear,
  clipped to [0, 1]): an MNIST-like stand-in with a constant zero border;
* ``digits14-shift`` — ``digits14`` with every training image also shifted by one
  pixel in the eight directions (zero fill): 12,123 train / the same 450 test, the
  stand-in for handwritten digits with as many samples as the held-out set;
* ``fashion8k`` / ``fashion60k`` — Fashion-MNIST 14x14 (2x2 average pooling), 8,000
  (stratified) or all 60,000 training images, the 10,000 test images;
* ``fashion8k-border`` — ``fashion8k`` with a 2-pixel border set to 0 in every image
  (constant pixels, as handwritten digits have: rank-deficient data Gram matrices);
* ``synthetic`` — 800 train / 400 test samples of 20 features in [0, 1], 3 classes
  from a nonlinear rule.

Usage::

    python benchmarks/bench_defaults.py --data-dir DIR                         # the whole protocol
    python benchmarks/bench_defaults.py --datasets digits8 digits14 --bonds 10 20 --candidates default ce
    python benchmarks/bench_defaults.py --list                                 # the candidates
    python benchmarks/bench_defaults.py --json FILE --table-only --candidates default --auto-loss-table

``--data-dir`` is where the Fashion-MNIST IDX files are (also read from the
cache or a system directory, see :func:`tnlearn.datasets.load_fashion_mnist`);
without them the Fashion-MNIST rows are skipped with a message.  ``--json
FILE`` appends every run as one JSON line, so a long protocol can be resumed
(runs already in the file are not repeated) and tabulated again with
``--table-only``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

#: Candidate configurations: keyword arguments of MPSClassifier on top of its defaults.  Every
#: candidate but "default" names its loss and steps per bond, so that it means what it meant when
#: the defaults were loss="mse", n_iter=1 (candidate "mse"; rows measured before loss="auto").
CANDIDATES = {
    "default": {},
    "mse": {"loss": "mse", "n_iter": 1},
    "ce": {"loss": "cross_entropy", "n_iter": 1},
    "no-precond": {"loss": "mse", "n_iter": 1, "precondition": False},
    "ce-no-precond": {"loss": "cross_entropy", "n_iter": 1, "precondition": False},
    "svd": {"loss": "mse", "n_iter": 1, "truncation": "svd"},
    "cg": {"solver": "cg", "n_iter": 2, "loss": "mse"},
    "identity-init": {"loss": "mse", "n_iter": 1, "init": "identity"},
    "raw": {"loss": "mse", "n_iter": 1, "sample_norm": False},
    "n_iter2": {"loss": "mse", "n_iter": 2},
    "ce-n_iter2": {"loss": "cross_entropy", "n_iter": 2},
    "ce-n_iter3": {"loss": "cross_entropy", "n_iter": 3},
    "n_iter3": {"loss": "mse", "n_iter": 3},
    "ce-damp1": {"loss": "cross_entropy", "n_iter": 1, "damping": 1.0},
    "alpha3": {"loss": "mse", "n_iter": 1, "alpha": 3.0},
    "alpha10": {"loss": "mse", "n_iter": 1, "alpha": 10.0},
    "ce-alpha3": {"loss": "cross_entropy", "n_iter": 1, "alpha": 3.0},
    "alpha100": {"loss": "mse", "n_iter": 1, "alpha": 100.0},
    "damp1": {"loss": "mse", "n_iter": 1, "damping": 1.0},
    "damp3": {"loss": "mse", "n_iter": 1, "damping": 3.0},
    "damp10": {"loss": "mse", "n_iter": 1, "damping": 10.0},
}

DEFAULT_SWEEPS = {"fashion60k": 5}


def _shifted(X, side):
    """``X`` (n, side*side) and its eight one-pixel shifts (zero fill), stacked: (9 n, side*side)."""
    images = np.pad(X.reshape(-1, side, side), ((0, 0), (1, 1), (1, 1)))
    shifts = [images[:, 1 + di:1 + di + side, 1 + dj:1 + dj + side]
              for di in (-1, 0, 1) for dj in (-1, 0, 1)]
    return np.concatenate(shifts).reshape(-1, side * side)


def _digits(upscale):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    if upscale:
        from scipy.ndimage import zoom

        X = np.stack([np.clip(zoom(x.reshape(8, 8), 14 / 8, order=1), 0, 1) for x in X]).reshape(len(X), -1)
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)


def _fashion(n_train, data_dir, border=0):
    from tnlearn.datasets import flatten_images, load_dataset, subsample

    ds = load_dataset("fashion-mnist", data_dir=data_dir, download=False)
    X_train, y_train = ds.X_train, ds.y_train
    if n_train < len(y_train):
        X_train, y_train = subsample(X_train, y_train, n_train, random_state=0)
    X_train, X_test = X_train.copy(), ds.X_test.copy()
    if border:
        for images in (X_train, X_test):
            images[:, :border, :] = images[:, -border:, :] = 0
            images[:, :, :border] = images[:, :, -border:] = 0
    return flatten_images(X_train), flatten_images(X_test), y_train, ds.y_test


def _synthetic():
    rng = np.random.default_rng(0)
    X = rng.random((1200, 20))
    y = (np.sin(3 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.5 * X[:, 3] > 1.1).astype(int) + (X[:, 4] > 0.6)
    return X[:800], X[800:], y[:800], y[800:]


def load(name, data_dir=None):
    """``(X_train, X_test, y_train, y_test)`` of a protocol data set."""
    if name == "digits8":
        return _digits(False)
    if name == "digits14":
        return _digits(True)
    if name == "digits14-shift":
        X_train, X_test, y_train, y_test = _digits(True)
        return _shifted(X_train, 14), X_test, np.tile(y_train, 9), y_test
    if name == "fashion8k":
        return _fashion(8000, data_dir)
    if name == "fashion60k":
        return _fashion(60000, data_dir)
    if name == "fashion8k-border":
        return _fashion(8000, data_dir, border=2)
    if name == "synthetic":
        return _synthetic()
    raise ValueError(f"unknown data set {name!r}")


DATASETS = ("digits8", "digits14", "digits14-shift", "fashion8k", "fashion8k-border", "fashion60k", "synthetic")


def read_runs(path):
    """The runs already in a JSON-lines file (one dict per line), or [] when there is no file."""
    if not path or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def append_run(path, row):
    """Append one run to a JSON-lines file (nothing when ``path`` is None): a long protocol resumes from it."""
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def faults(accs, losses, rise=0.01, drop=0.01):
    """``(loss rises > rise, accuracy drops > drop)`` counted over consecutive sweeps."""
    n_rise = sum(1 for a, b in zip(losses, losses[1:]) if b > a * (1 + rise))
    n_drop = sum(1 for a, b in zip(accs, accs[1:]) if b < a - drop)
    return n_rise, n_drop


def run_one(name, data, bond, candidate, n_sweeps, seed=0):
    """Train one configuration; a dict with the per-sweep figures."""
    from tnlearn import MPSClassifier

    X_train, X_test, y_train, y_test = data
    model = MPSClassifier(max_bond=bond, n_sweeps=n_sweeps, random_state=seed, **CANDIDATES[candidate])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time.perf_counter()
        model.fit(X_train, y_train, eval_set=(X_test, y_test))
        seconds = time.perf_counter() - t
    recs = model.history_.records
    accs = [r.test_accuracy for r in recs]
    losses = [r.loss for r in recs]
    return {
        "dataset": name, "bond": bond, "candidate": candidate, "seed": seed, "n_sweeps": n_sweeps,
        "test_accuracy": accs, "loss": losses, "rejected": [r.rejected_updates for r in recs],
        "train_accuracy": [r.train_accuracy for r in recs], "seconds": seconds,
        "stopped": model.history_.meta.get("stopped"),
        "loss_function": model.loss_function_, "n_iter": model.history_.meta.get("n_iter"),
        "warnings": [str(w.message)[:160] for w in caught if "Divergence" in type(w.message).__name__],
    }


def loss_label(loss, n_iter):
    """``ce x3`` / ``mse x1``: a fit's loss and its steps per bond, short."""
    return f"{'ce' if loss == 'cross_entropy' else 'mse'} x{n_iter}"


def _label(row):
    """The candidate's name; for "default" also what loss="auto" chose (``default (ce x3)``)."""
    if row["candidate"] != "default" or "loss_function" not in row:
        return row["candidate"]
    return f"default ({loss_label(row['loss_function'], row['n_iter'])})"


def table(rows):
    """The protocol table (markdown) and a per-candidate summary."""
    out = ["| data set | m | candidate | test accuracy per sweep (%) | best / final | loss per sweep | "
           "rejected | loss+ / acc- | s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        accs = [100 * a for a in r["test_accuracy"]]
        rise, drop = faults(r["test_accuracy"], r["loss"])
        flag = f"**{rise} / {drop}**" if rise or drop else "0 / 0"
        stop = " (stopped)" if r.get("stopped") else ""
        warn = " (diverged)" if r.get("warnings") else ""
        out.append(
            f"| {r['dataset']} | {r['bond']} | {_label(r)} | {' / '.join(f'{a:.1f}' for a in accs)}{stop}{warn} | "
            f"{max(accs, default=0):.1f} / {accs[-1] if accs else 0:.1f} | "
            f"{' / '.join(f'{v:.4g}' for v in r['loss'])} | {sum(r['rejected'])} | {flag} | {r['seconds']:.0f} |"
        )
    summary = ["", "| candidate | runs | mean best | mean final | runs with a fault | total s |", "|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        by.setdefault(r["candidate"], []).append(r)
    for cand, rs in by.items():
        best = np.mean([100 * max(r["test_accuracy"]) for r in rs if r["test_accuracy"]])
        final = np.mean([100 * r["test_accuracy"][-1] for r in rs if r["test_accuracy"]])
        bad = sum(1 for r in rs if any(faults(r["test_accuracy"], r["loss"])))
        summary.append(f"| {cand} | {len(rs)} | {best:.2f} | {final:.2f} | {bad} | {sum(r['seconds'] for r in rs):.0f} |")
    return "\n".join(out + summary)


#: training samples and classes of each data set (for the loss="auto" table)
SIZES = {"digits8": (1347, 10), "digits14": (1347, 10), "digits14-shift": (12123, 10), "fashion8k": (8000, 10),
         "fashion8k-border": (8000, 10), "fashion60k": (60000, 10), "synthetic": (800, 3)}


def auto_loss_table(rows, a="mse", b="ce-n_iter3"):
    """Per data set and m: samples per block parameter, final accuracy of ``a`` and ``b``, and the default's."""
    from tnlearn import MPSClassifier

    by = {(r["dataset"], r["bond"], r["candidate"]): r for r in rows}
    out = [f"| data set | m | n / (m^2 d^2 L) | {a} final | {b} final | default picks | default final |",
           "|---|---|---|---|---|---|---|"]
    for name in DATASETS:
        for bond in (10, 20, 32, 64, 128):
            ra, rb, rd = (by.get((name, bond, c)) for c in (a, b, "default"))
            if not (ra or rb or rd) or name not in SIZES:
                continue
            n, classes = SIZES[name]
            ratio = n / (bond**2 * 4 * classes)
            fin = lambda r: f"{100 * r['test_accuracy'][-1]:.1f}" if r else "-"  # noqa: E731
            if rd:
                pick, final = _label(rd).removeprefix("default "), fin(rd)
            else:  # not run as "default": the same computation as the candidate the rule picks, marked *
                ce = MPSClassifier(max_bond=bond)._resolve_loss(n, classes) == "cross_entropy"  # the rule itself
                same = rb if ce else ra
                pick, final = ("(ce x3)" if ce else "(mse x1)"), (fin(same) + "*" if same else "-")
            out.append(f"| {name} | {bond} | {ratio:.2f} | {fin(ra)} | {fin(rb)} | {pick} | {final} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--bonds", type=int, nargs="+", default=[10, 20, 32, 64])
    p.add_argument("--candidates", nargs="+", default=["default", "mse", "ce", "no-precond", "svd"],
                   choices=list(CANDIDATES))
    p.add_argument("--sweeps", type=int, default=4, help="sweeps per run (fashion60k: 5)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data-dir", default=None, help="directory with the Fashion-MNIST IDX files")
    p.add_argument("--json", default=None, help="append every run to this JSON-lines file (and skip runs in it)")
    p.add_argument("--table-only", action="store_true", help="print the table of --json's runs and exit")
    p.add_argument("--list", action="store_true", help="list the candidate configurations and exit")
    p.add_argument("--auto-loss-table", action="store_true",
                   help="with --table-only: also the table of loss='auto' (mse against ce-n_iter3 by samples per "
                        "block parameter)")
    args = p.parse_args(argv)

    if args.list:
        for name, kw in CANDIDATES.items():
            print(f"{name:16s} {kw}")
        return 0
    done = read_runs(args.json)
    if args.table_only:
        given = "--candidates" in (sys.argv[1:] if argv is None else argv)
        shown = [r for r in done if r["candidate"] in args.candidates] if given else done
        order = {name: i for i, name in enumerate(DATASETS)}
        print(table(sorted(shown, key=lambda r: (order.get(r["dataset"], len(order)), r["bond"]))))
        if args.auto_loss_table:
            print()
            print(auto_loss_table(done))
        return 0
    key = lambda r: (r["dataset"], r["bond"], r["candidate"], r["seed"])  # noqa: E731
    have = {key(r): r for r in done}
    rows = []
    for name in args.datasets:
        try:
            data = load(name, args.data_dir)
        except Exception as exc:  # noqa: BLE001 - a missing data set skips its rows, with the reason
            print(f"bench_defaults: skipping {name}: {exc}", file=sys.stderr)
            continue
        for bond in args.bonds:
            for cand in args.candidates:
                for seed in args.seeds:
                    k = (name, bond, cand, seed)
                    if k in have:
                        rows.append(have[k])
                        continue
                    r = run_one(name, data, bond, cand, DEFAULT_SWEEPS.get(name, args.sweeps), seed)
                    rows.append(r)
                    print(f"{name} m={bond} {cand} seed={seed}: test "
                          f"{' / '.join(f'{100 * a:.1f}' for a in r['test_accuracy'])}  loss "
                          f"{' / '.join(f'{v:.4g}' for v in r['loss'])}  {r['seconds']:.0f} s", flush=True)
                    append_run(args.json, r)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
