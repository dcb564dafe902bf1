"""The TT-net protocol: fixed TT-ranks, the automatic rank (ARD) and a dense MLP, over several data sets.

``TTNetClassifier``'s defaults and its automatic rank are judged the way the MPS
defaults are (``bench_defaults.py``): on several data sets, never one.  Every
candidate is trained on every data set and one table is printed: test accuracy
after each sweep, best / final, the recorded loss per sweep, rejected bond
updates, the TT-ranks found, the TT layer's compression (dense parameters / TT
parameters) and seconds.  ``mlp`` is scikit-learn's ``MLPClassifier`` with the
same hidden width (the dense network the TT layer replaces).

Data sets (``--datasets``):

* ``digits8`` / ``digits14`` — scikit-learn's 8x8 digits (1,347 train / 450 test), and
  the same upscaled to 14x14 (see ``bench_defaults.py``);
* ``fashion8k`` / ``fashion60k`` — Fashion-MNIST at full 28x28 resolution (784 inputs
  padded to 1024 = 4^5, as the CLI's ``--model tt-net`` does), 8,000 (stratified) or
  60,000 training images, the 10,000 test images;
* ``mnist`` — MNIST 28x28, 60,000 / 10,000, when ``--mnist-dir`` holds its IDX files.

Usage::

    python benchmarks/bench_tt.py --data-dir /usr/share/datasets/fashion-mnist
    python benchmarks/bench_tt.py --datasets digits8 digits14 --candidates default ard16 mlp
    python benchmarks/bench_tt.py --json runs.jsonl --table-only
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_defaults import _digits, append_run, read_runs  # noqa: E402  (same digits splits and run log)

#: Candidates: TTNetClassifier keyword arguments on top of its defaults ("mlp": the dense baseline).
CANDIDATES = {
    "default": {},
    "rank1": {"max_rank": 1},
    "rank2": {"max_rank": 2},
    "rank8": {"max_rank": 8},
    "rank16": {"max_rank": 16},
    "ard16": {"max_rank": 16, "rank_prior": "ard"},
    "ard8": {"max_rank": 8, "rank_prior": "ard"},
    "ard16-tol05": {"max_rank": 16, "rank_prior": "ard", "rank_tol": 0.05},
    "ard16-tol20": {"max_rank": 16, "rank_prior": "ard", "rank_tol": 0.2},
    "ard16-tol35": {"max_rank": 16, "rank_prior": "ard", "rank_tol": 0.35},
    "ard16-tol50": {"max_rank": 16, "rank_prior": "ard", "rank_tol": 0.5},
    "lr-decay": {"lr_decay": 0.5},
    "hidden-ends": {"hidden_shape": (8, 4, 4, 4, 8)},  # 28x28 only: the 4096 hidden units' larger factors at the ends
    "hidden8192": {"hidden_shape": (8, 8, 4, 4, 8)},  # 28x28 only: twice the default width, rank 4
    "old-default": {"epochs_per_bond": 0.5, "hidden": "input"},  # before the schedule / width fix
    "mlp": None,
}

DATASETS = ("digits8", "digits14", "fashion8k", "fashion60k", "mnist")


def _idx(name, n_train, data_dir):
    from tnlearn.datasets import flatten_images, load_dataset, subsample

    ds = load_dataset(name, data_dir=data_dir, pool=1, download=False)
    X_train, y_train = ds.X_train, ds.y_train
    if n_train < len(y_train):
        X_train, y_train = subsample(X_train, y_train, n_train, random_state=0)
    return flatten_images(X_train), flatten_images(ds.X_test), y_train, ds.y_test


def load(name, data_dir=None, mnist_dir=None):
    """``(X_train, X_test, y_train, y_test)`` of a data set."""
    if name in ("digits8", "digits14"):
        return _digits(name == "digits14")
    if name == "fashion8k":
        return _idx("fashion-mnist", 8000, data_dir)
    if name == "fashion60k":
        return _idx("fashion-mnist", 60000, data_dir)
    if name == "mnist":
        return _idx("mnist", 60000, mnist_dir)
    raise ValueError(f"unknown data set {name!r}")


def _mlp(data, hidden, seed):
    from sklearn.neural_network import MLPClassifier

    X_train, X_test, y_train, y_test = data
    mlp = MLPClassifier(hidden_layer_sizes=(hidden,), early_stopping=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        mlp.fit(X_train, y_train)
        seconds = time.perf_counter() - t
    acc = float(mlp.score(X_test, y_test))
    return {"test_accuracy": [acc], "loss": [float(mlp.loss_)], "rejected": [0], "tt_ranks": None,
            "compression": 1.0, "n_params": int(sum(c.size for c in mlp.coefs_[:1])), "seconds": seconds}


def add_run_options(p):
    """The options every data-set protocol shares: seeds, data directories, the run log."""
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data-dir", default=None, help="directory with the Fashion-MNIST IDX files")
    p.add_argument("--mnist-dir", default=None, help="directory with the MNIST IDX files (for --datasets mnist)")
    p.add_argument("--json", default=None, help="append every run to this JSON-lines file (and skip runs in it)")
    p.add_argument("--table-only", action="store_true", help="print the table of --json's runs and exit")


def run_protocol(args, names, run, identity, table, report=None, column="candidate"):
    """Train every ``name`` on every data set and seed of ``args``; print one table at the end.

    ``run(dataset, data, name, seed) -> row``.  ``identity(dataset, name, seed)`` gives
    the fields a run's row will carry that tell it apart (data set, candidate, seed, ...):
    a run whose fields all match a row already in ``--json`` is skipped.  ``report(row)``
    is the line printed after each run (default: its table row).  The closing table has
    every row of the data sets and of the names (row field ``column``) asked for.
    Returns the exit status.
    """
    done = read_runs(args.json)
    if args.table_only:
        print(table(done))
        return 0
    rows = list(done)
    for dataset in args.datasets:
        try:
            data = load(dataset, args.data_dir, args.mnist_dir)
        except (FileNotFoundError, OSError) as exc:
            print(f"skipping {dataset}: {exc}", file=sys.stderr)
            continue
        for name in names:
            for seed in args.seeds:
                fields = identity(dataset, name, seed)
                if any(all(r.get(k) == v for k, v in fields.items()) for r in done):
                    continue
                row = run(dataset, data, name, seed)
                rows.append(row)
                print(report(row) if report else table([row]).splitlines()[-1], flush=True)
                append_run(args.json, row)
    print(table([r for r in rows if r["dataset"] in args.datasets and r[column] in names]))
    return 0


def run_one(name, data, candidate, n_sweeps, seed=0):
    """Train one candidate on one data set; a dict with the per-sweep figures."""
    from tnlearn.models.tt_net import TTNetClassifier

    kwargs = dict(CANDIDATES[candidate] or {})
    probe = TTNetClassifier(n_sweeps=n_sweeps, random_state=seed)
    in_shape, hidden = probe._shapes(data[0].shape[1])
    if kwargs.pop("hidden", None) == "input":
        kwargs["hidden_shape"] = in_shape
    if CANDIDATES[candidate] is None:
        row = _mlp(data, int(np.prod(hidden)), seed)
    else:
        model = TTNetClassifier(n_sweeps=n_sweeps, random_state=seed, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = time.perf_counter()
            model.fit(data[0], data[2], eval_set=(data[1], data[3]))
            seconds = time.perf_counter() - t
        recs = model.history_.records
        row = {"test_accuracy": [r.test_accuracy for r in recs], "loss": [r.loss for r in recs],
               "rejected": [r.rejected_updates for r in recs], "tt_ranks": model.tt_.ranks,
               "compression": float(model.compression_), "n_params": int(model.tt_.n_params), "seconds": seconds,
               "warnings": [str(w.message)[:160] for w in caught if "Divergence" in type(w.message).__name__]}
    row.update({"dataset": name, "candidate": candidate, "seed": seed, "n_sweeps": n_sweeps})
    return row


def table(rows):
    """The protocol table (markdown)."""
    out = ["| data set | candidate | test accuracy per sweep (%) | best / final | loss per sweep | rejected | "
           "TT-ranks | TT params | compression | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        accs = [100 * a for a in r["test_accuracy"]]
        warn = " (diverged)" if r.get("warnings") else ""
        ranks = "dense" if r["tt_ranks"] is None else ",".join(map(str, r["tt_ranks"]))
        out.append(
            f"| {r['dataset']} | {r['candidate']} | {' / '.join(f'{a:.1f}' for a in accs)}{warn} | "
            f"{max(accs):.1f} / {accs[-1]:.1f} | {' / '.join(f'{v:.4g}' for v in r['loss'])} | "
            f"{sum(r['rejected'])} | {ranks} | {r['n_params']:,} | {r['compression']:.0f}x | {r['seconds']:.0f} |"
        )
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["digits8", "digits14", "fashion8k"], choices=DATASETS)
    p.add_argument("--candidates", nargs="+", default=["default", "rank2", "rank8", "rank16", "ard16", "mlp"],
                   choices=list(CANDIDATES))
    p.add_argument("--sweeps", type=int, default=4, help="sweeps per run (default: 4, the model's default)")
    add_run_options(p)
    args = p.parse_args(argv)

    def report(row):
        accs = " / ".join(f"{100 * a:.1f}" for a in row["test_accuracy"])
        return (f"{row['dataset']} {row['candidate']} seed={row['seed']}: test {accs}  ranks {row['tt_ranks']}  "
                f"compression {row['compression']:.0f}x  {row['seconds']:.0f} s")

    return run_protocol(args, args.candidates,
                        lambda dataset, data, candidate, seed: run_one(dataset, data, candidate, args.sweeps, seed),
                        lambda dataset, candidate, seed: {"dataset": dataset, "candidate": candidate, "seed": seed,
                                                          "n_sweeps": args.sweeps},
                        table, report)


if __name__ == "__main__":
    sys.exit(main())
