"""Command line: ``tnlearn train | evaluate | plot``.

Examples
--------
::

    tnlearn train --out runs/digits                       # 8x8 digits, m=16, 4 sweeps
    tnlearn train --dataset mnist --bond-dim 32 --sweeps 6 --out runs/mnist-m32
    tnlearn evaluate runs/digits                          # accuracy + confusion matrix
    tnlearn plot runs/mnist-m16 runs/mnist-m32 --out plots
    mpiexec -n 4 tnlearn train --dataset mnist --out runs/mnist-4ranks   # data-parallel (pip install 'tnlearn[mpi]')

Expected failures (missing files, data sets, bad options) print one line
``tnlearn: error: ...`` on stderr and exit with status 2 (under ``mpiexec``
the failing rank then aborts the whole job, so no rank is left waiting).

``tnlearn train`` started by an MPI launcher (``mpiexec -n K``, ``srun``)
trains data-parallel over the ``K`` ranks (``--distributed auto``, the
default): every rank loads the data, rank 0 first (so a download happens
once), each keeps its shard of the samples, and only rank 0 prints, writes
the run directory, checkpoints and plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
MODELS = ("mps", "conv-mps", "tt-net", "tn-cnn")
ORDERS = ("row", "column", "zigzag")


# ---------------------------------------------------------------------- helpers
def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _write_json(path, obj):
    """Write ``obj`` as JSON atomically (temporary file in the same directory + ``os.replace``).

    A list is written one item per line (readable history files); anything else indented.
    """
    if isinstance(obj, list):
        text = "[\n" + ",\n".join(json.dumps(o, default=_json_default) for o in obj) + "\n]\n"
    else:
        text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x") as fh:  # "x": never clobber; honours the umask, unlike mkstemp
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def _read_json(path, what):
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the {what} file is corrupt") from None


def _load_history(run_dir):
    from tnlearn.history import History

    path = Path(run_dir) / "history.json"
    if not path.is_file():
        note = "" if Path(run_dir).is_dir() else " (the directory does not exist)"
        raise FileNotFoundError(f"{path} not found{note}: is {run_dir} a run directory written by "
                                "'tnlearn train --out'?")
    try:
        return History.from_json(_read_json(path, "history"))
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path} does not hold tnlearn sweep records ({exc})") from None


def _positive_int(text, least=1):
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {text}")
    return value


def _non_negative_int(text):
    return _positive_int(text, least=0)


def _tt_cores(text):
    return _positive_int(text, least=2)  # a sweep moves over bonds: two cores at least


def _dataset_name(text):
    """``--dataset`` in any spelling load_dataset accepts (fashion_mnist, CIFAR-10), as DATASETS writes it."""
    from tnlearn.datasets import dataset_key

    return dataset_key(text) or text  # an unknown name is left for argparse's choices to refuse


def _load_data(name, data_dir, pool, n_train, seed, download, order):
    from tnlearn.datasets import flatten_images, load_dataset

    ds = load_dataset(name, data_dir=data_dir, pool=pool, n_train=n_train, random_state=seed,
                      download=download)
    return ds, flatten_images(ds.X_train, order), flatten_images(ds.X_test, order)


def _data_options(p, default_dataset):
    p.add_argument("--dataset", type=_dataset_name, choices=DATASETS, default=default_dataset,
                   help="data set" + (f" (default: {default_dataset})" if default_dataset else
                                      " (default: the one in run.json)"))
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the four (fashion-)MNIST IDX files, or "
                   "cifar-10-binary.tar.gz (or its batch files)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="never download missing (fashion-)MNIST files")
    p.add_argument("--pool", type=_positive_int, metavar="P",
                   help="average-pooling factor (default: 2 for (fashion-)MNIST with --model mps, 1 for "
                        "digits, CIFAR-10 and the conv-mps / tt-net / tn-cnn models)")
    p.add_argument("--order", choices=ORDERS, default=None if default_dataset is None else "row",
                   help="pixel order along the chain (default: row)")


# ------------------------------------------------------------------------ train
RUN_MODELS = ("model.npz", "interrupted.npz")  # what a run directory's training leaves: never replaced silently
#: Models whose saved run continues with --resume (warm_start from model.npz)
RESUMABLE = ("mps", "tn-cnn")
#: Models that train data-parallel over MPI ranks (fit(comm=...))
DISTRIBUTED = ("mps", "tn-cnn")


def _resume_options(args):
    """Fill ``args`` from the run directory's run.json for ``--resume``; returns the run directory."""
    run_dir = Path(args.resume)
    run_path, model_path = run_dir / "run.json", run_dir / "model.npz"
    for path in (run_path, model_path):
        if not path.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: {path.name} not found; it is written by "
                                    "`tnlearn train --out RUNDIR` after the first sweep")
    saved = _read_json(run_path, "run").get("options", {})
    keep = {"sweeps", "quiet", "plots", "checkpoint_every", "resume", "out", "overwrite", "func", "distributed"}
    if args.backend is not None:  # e.g. a run started on a GPU, continued on a CPU machine
        keep.add("backend")
    for key, value in saved.items():
        if key not in keep and hasattr(args, key):
            setattr(args, key, value)
    return run_dir


def _last_checkpoint(clf, out, args):
    """Where the last checkpoint of an interrupted run is, in words."""
    done = len(clf.history_) if hasattr(clf, "history_") else 0
    last = done if done == args.sweeps else done // args.checkpoint_every * args.checkpoint_every
    return f"{out}/model.npz holds sweep {last}" if last else "no checkpoint was written (no sweep had finished)"


def _train_comm(choice):
    """The communicator for ``--distributed`` (auto: MPI when an MPI launcher started several ranks)."""
    from tnlearn.distributed import get_comm, launched_size

    if choice == "auto":
        choice = "mpi" if launched_size() > 1 else "none"
    return get_comm("mpi" if choice == "mpi" else None)


#: The Adam settings of the models whose stages sit below a non-linearity.
_ADAM_OPTIONS = ("epochs_per_bond", "learning_rate", "lr_decay")
#: Options that belong to some models only: set away from their default for another model, they are an error.
MODEL_OPTIONS = {
    "conv-mps": ("patch", "channels", "conv_bond"),
    "tt-net": ("tt_rank", "tt_max_rank", "tt_cores", *_ADAM_OPTIONS),
    "tn-cnn": ("cnn_channels", "kernel_size", "conv_rank", "n_hidden", "tt_rank", *_ADAM_OPTIONS),
}


def _flag(dest):
    return f"--{dest.replace('_', '-')}"


def _given_options(argv):
    """The model options written on the command line (``--tt-rank 4`` counts even at its default value)."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    dests = [d for options in MODEL_OPTIONS.values() for d in options] + ["bond_dim"]  # the ones checked below
    return {d for d in dests for t in tokens if t == _flag(d) or t.startswith(_flag(d) + "=")}


def _foreign_options(args, model):
    """Refuse options of another model (they would be ignored without a word)."""
    defaults = vars(build_parser().parse_args(["train", "--out", "."]))  # the parser's defaults, said once
    given = getattr(args, "given_options", set())

    def changed_or_given(k):
        return k in given or getattr(args, k, defaults[k]) != defaults[k]

    own = set(MODEL_OPTIONS.get(model, ()))
    foreign = {}  # option -> the models it belongs to
    for owner, options in MODEL_OPTIONS.items():
        for k in options:
            if k not in own and changed_or_given(k):
                foreign.setdefault(k, []).append(owner)
    if foreign:
        changed = [_flag(k) for k in foreign]
        owners = sorted({o for os_ in foreign.values() for o in os_}, key=list(MODEL_OPTIONS).index)
        one = len(changed) == 1
        raise ValueError(f"{', '.join(changed)} only appl{'ies' if one else 'y'} to --model {' / '.join(owners)}, "
                         f"and this run is --model {model}: add --model {owners[0]} or drop "
                         f"{'it' if one else 'them'}")
    if model in ("tt-net", "tn-cnn") and getattr(args, "tt_rank", None) is None:
        args.tt_rank = _default_max_rank(model)  # each model's own default (4 for tt-net, 8 for tn-cnn)
    if model in ("tt-net", "tn-cnn") and changed_or_given("bond_dim"):
        raise ValueError(f"--bond-dim sets the MPS's bond dimension; --model {model} has TT-ranks: use --tt-rank R "
                         f"{'(or --tt-rank auto) ' if model == 'tt-net' else ''}and drop --bond-dim")
    if model == "tn-cnn" and getattr(args, "tt_rank", None) == "auto":
        raise ValueError("--tt-rank auto (the ARD prior) is for --model tt-net; give --model tn-cnn a number, "
                         "e.g. --tt-rank 8")
    if model == "tt-net" and getattr(args, "tt_rank", "auto") != "auto" and changed_or_given("tt_max_rank"):
        raise ValueError(f"--tt-max-rank is where --tt-rank auto starts, and this run has a fixed --tt-rank "
                         f"{args.tt_rank}: add --tt-rank auto, or set the fixed rank with --tt-rank "
                         f"{args.tt_max_rank} and drop --tt-max-rank")


def _default_max_rank(model):
    """The estimator's own default ``max_rank``: what ``--tt-rank`` means when it is not given."""
    from tnlearn.models import TNCNNClassifier, TTNetClassifier

    return {"tt-net": TTNetClassifier, "tn-cnn": TNCNNClassifier}[model]().max_rank


def _staged_model_checks(args):
    """What the conv-mps and tt-net models do not support (yet), as errors that name the way out."""
    model = getattr(args, "model", "mps")
    _foreign_options(args, model)
    if model == "mps":
        return
    if args.resume and model not in RESUMABLE:
        raise ValueError(f"--resume continues --model {' / '.join(RESUMABLE)} runs only; start the {model} run "
                         "again (its checkpoints are complete models: tnlearn evaluate works on them)")
    from tnlearn.distributed import launched_size

    if model not in DISTRIBUTED and (args.distributed == "mpi" or (args.distributed == "auto" and launched_size() > 1)):
        raise ValueError(f"--distributed mpi trains --model {' / '.join(DISTRIBUTED)} only; run {model} in one "
                         "process (not under mpiexec / srun)")
    if model == "conv-mps" and getattr(args, "dataset", None) == "cifar10":
        raise ValueError("--model conv-mps takes grayscale images and CIFAR-10 is colour (32x32x3): use --model mps "
                         "or tt-net, which take the flattened pixels with their three channels")
    if model in ("conv-mps", "tn-cnn") and args.order != "row":
        raise ValueError(f"--order {args.order} would scramble the image patches: --model {model} reads the "
                         "image in row order (drop --order)")
    head_only = {"loss": None, "solver": "gd", "truncation": "data", "precondition": None, "alpha": None,
                 "early_stopping": False, "validation_fraction": None, "n_iter_no_change": None}
    if model in ("tt-net", "tn-cnn"):
        head_only.update({"n_iter": None, "damping": None})
    changed = [f"--{k.replace('_', '-')}" for k, default in head_only.items() if getattr(args, k) != default]
    if changed:
        one = len(changed) == 1
        how = ("conv-mps's head uses gd / mse / data truncation with preconditioning" if model == "conv-mps"
               else f"{model} trains with cross-entropy by minibatch Adam (--learning-rate, --lr-decay, "
                    "--epochs-per-bond)")
        raise ValueError(f"{', '.join(changed)} only appl{'ies' if one else 'y'} to --model mps; {how}: "
                         f"drop {'it' if one else 'them'}")


def _positive_int_or_auto(text):
    """argparse type of --tt-rank and --n-iter: an integer >= 1 or 'auto'."""
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or 'auto', got {text}") from None


def _epochs_or_auto(text):
    """argparse type of --epochs-per-bond: a number > 0 or 'auto'."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'auto'") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0, or 'auto'")
    return value


def _non_negative_float(text):
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _new_model(args, ds, verbose):
    from tnlearn.models import ConvMPSClassifier, MPSClassifier, TNCNNClassifier, TTNetClassifier

    model = getattr(args, "model", "mps")
    if model == "tn-cnn":
        return TNCNNClassifier(channels=tuple(args.cnn_channels), kernel_size=args.kernel_size,
                               conv_rank=args.conv_rank, n_hidden=args.n_hidden or None, max_rank=args.tt_rank,
                               cutoff=args.cutoff,
                               n_sweeps=args.sweeps, epochs_per_bond=args.epochs_per_bond,
                               learning_rate=args.learning_rate, lr_decay=args.lr_decay,
                               image_shape=tuple(ds.image_shape), dtype=args.dtype, backend=args.backend,
                               random_state=args.seed, verbose=verbose)
    if model == "conv-mps":
        extra = {k: getattr(args, k) for k in ("damping", "n_iter") if getattr(args, k) is not None}
        return ConvMPSClassifier(patch=args.patch, n_channels=args.channels, conv_bond=args.conv_bond,
                                 max_bond=args.bond_dim, cutoff=args.cutoff, n_sweeps=args.sweeps,
                                 image_shape=tuple(ds.image_shape), dtype=args.dtype,
                                 backend=args.backend, random_state=args.seed, verbose=min(verbose, 1), **extra)
    if model == "tt-net":
        auto = args.tt_rank == "auto"
        return TTNetClassifier(n_cores=args.tt_cores, max_rank=args.tt_max_rank if auto else args.tt_rank,
                               rank_prior="ard" if auto else None, cutoff=args.cutoff,
                               n_sweeps=args.sweeps, epochs_per_bond=args.epochs_per_bond,
                               learning_rate=args.learning_rate, lr_decay=args.lr_decay, dtype=args.dtype,
                               backend=args.backend, random_state=args.seed, verbose=verbose)
    extra = {k: getattr(args, k, None) for k in ("precondition", "damping", "loss", "n_iter", "alpha",
                                                 "validation_fraction", "n_iter_no_change")}
    extra = {k: v for k, v in extra.items() if v is not None}
    return MPSClassifier(max_bond=args.bond_dim, cutoff=args.cutoff, n_sweeps=args.sweeps, solver=args.solver,
                         truncation=args.truncation, dtype=args.dtype,
                         early_stopping=bool(getattr(args, "early_stopping", False)),
                         backend=args.backend, random_state=args.seed, verbose=verbose, **extra)


def _model_layout(args, image_shape, n_features):
    """How ``--model`` lays out the images, in words, for the status line before training.

    ``mps``: one site per (pooled) pixel; ``conv-mps``: one head site per patch;
    ``tt-net``: the flattened image is the input of a TT layer with ``--tt-cores``
    cores (zero-padded to a power of two, as the model does).
    """
    model = getattr(args, "model", "mps")
    if model == "conv-mps":
        from tnlearn.stages.conv import patch_grid

        p = args.patch
        try:
            gh, gw = patch_grid(tuple(image_shape), p, p)  # the CLI's conv stage: stride = patch
        except ValueError:  # a patch that does not fit: the model's own check says so when it is built
            return f"{p}x{p} patches -> conv stage -> MPS head"
        return f"{gh}x{gw} grid of {p}x{p} patches -> {gh * gw} head sites"
    if model == "tn-cnn":
        return _cnn_layout(args, image_shape)
    if model == "tt-net":
        import math

        from tnlearn.stages.tt import factorize

        try:
            in_shape = factorize(n_features, args.tt_cores)
        except ValueError:
            return f"{n_features} inputs -> TT layer with {args.tt_cores} cores"
        size = math.prod(in_shape)
        padded = f", zero-padded to {size} = {' x '.join(map(str, in_shape))}" if size != n_features else ""
        return f"{n_features} inputs ({args.order} order{padded}) -> TT layer with {len(in_shape)} cores"
    return f"{n_features} sites ({args.order} order)"


def _cnn_layout(args, image_shape):
    """``28x28x1 -> conv 3x3 16 ch + max-pool 2 -> 14x14x16 -> ... -> dense TT layer 1568 -> 256 -> output layer``."""
    from tnlearn.models.tn_cnn import feature_map_shapes

    shape = tuple(image_shape) + ((1,) if len(image_shape) == 2 else ())
    parts = ["x".join(map(str, shape))]
    k = args.kernel_size
    try:
        shapes = feature_map_shapes(shape, args.cnn_channels, k)
    except ValueError:  # a map too small: the model's own check says so when it is built
        return f"{parts[0]} -> {len(args.cnn_channels)} TT convolutions -> output layer"
    for c, out in zip(args.cnn_channels, shapes):
        parts.append(f"conv {k}x{k} {c} ch + max-pool 2 -> {'x'.join(map(str, out))}")
    if args.n_hidden:
        parts.append(f"dense TT layer (rank {args.tt_rank}) {math.prod(shapes[-1])} -> {args.n_hidden}")
    parts.append("output layer")
    return " -> ".join(parts)


def cmd_train(args):
    from tnlearn import __version__
    from tnlearn.backend import BackendUnavailableError, get_backend
    from tnlearn.io import load_model, save_model
    from tnlearn.plotting import write_run_plots

    t0 = time.perf_counter()
    if not args.resume:  # what the model cannot do is said before any MPI or data set-up
        _staged_model_checks(args)
    comm = _train_comm(args.distributed)
    root = comm.rank == 0
    if args.resume:
        out = _resume_options(args)
    elif args.out:
        out = Path(args.out)
    else:
        raise ValueError("say where the run goes: --out RUNDIR (new run) or --resume RUNDIR (continue one)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    held = [name for name in RUN_MODELS if (out / name).exists()]
    if not args.resume and held and not args.overwrite:
        # only a finished sweep's checkpoint (model.npz) can be continued
        resumable = getattr(args, "model", "mps") in RESUMABLE and "model.npz" in held
        how = f"continue it with `--resume {out}`, replace it" if resumable else "replace it"
        raise ValueError(f"--out {out} already holds a trained run ({', '.join(held)}): {how} with --overwrite, "
                         "or choose another directory")
    if args.resume:
        _staged_model_checks(args)
    args.backend = args.backend or "numpy"
    try:  # a backend this machine cannot run fails here, before any data is loaded
        get_backend(args.backend)
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"{exc} (on the command line: --backend numpy)") from exc
    if getattr(args, "model", "mps") != "mps" and args.pool is None:
        args.pool = 1  # the conv stage / TT layer see the full-resolution image
    if not root:
        comm.barrier()  # rank 0 loads (and downloads) first
    ds, X_train, X_test = _load_data(args.dataset, args.data_dir, args.pool, args.n_train, args.seed,
                                     args.download, args.order)
    if root:
        comm.barrier()
    if not args.quiet and root:
        size = "x".join(map(str, ds.image_shape))
        print(f"{ds.name}: {len(X_train)} train / {len(X_test)} test images {size} -> "
              f"{_model_layout(args, ds.image_shape, X_train.shape[1])}", flush=True)
    missing = np.setdiff1d(ds.y_test, ds.y_train)
    if missing.size and root:  # e.g. --n-train below the number of classes: the model cannot predict them
        print(f"warning: the {len(X_train)} training images hold {np.unique(ds.y_train).size} of the "
              f"{np.union1d(ds.y_train, ds.y_test).size} classes; the model cannot predict classes "
              f"{missing.tolist()} of the test set (raise --n-train)", file=sys.stderr, flush=True)
    verbose = 0 if args.quiet else 2
    if args.resume:
        clf = load_model(out / "model.npz", backend=args.backend)
        done = len(clf.history_)
        if done >= args.sweeps:
            if root:
                print(f"{out} already has {done} sweeps (asked for {args.sweeps} in total); nothing to do")
            return 0
        clf.set_params(warm_start=True, n_sweeps=args.sweeps - done, verbose=verbose)
        if not args.quiet and root:
            print(f"resuming {out} after sweep {done}, up to {args.sweeps} sweeps", flush=True)
    else:
        clf = _new_model(args, ds, verbose)
        # a value or combination the estimator refuses (--cutoff -1, --solver cg --loss cross_entropy) fails
        # here, before --overwrite removes the old run: the fit's own checks, run before the fit
        from tnlearn.models import ConvMPSClassifier

        if isinstance(clf, ConvMPSClassifier):  # its checks need the image size
            clf._check_params(X_train.shape[1])
        else:
            clf._check_params()

    options = {k: v for k, v in vars(args).items() if k not in ("func", "resume", "given_options")}
    options["data_dir"] = args.data_dir and os.path.abspath(args.data_dir)  # evaluate from any cwd
    pool = args.pool if args.pool is not None else (1 if ds.name == "digits" else 2)  # load_dataset's default
    run = {
        "dataset": ds.name, "image_shape": list(ds.image_shape), "order": args.order, "pool": pool,
        "n_train": len(X_train), "n_test": len(X_test), "n_features": int(X_train.shape[1]),
        "options": options, "tnlearn_version": __version__, "mpi_ranks": comm.size,
    }
    if root:
        out.mkdir(parents=True, exist_ok=True)
        if not args.resume:  # --overwrite: the old run's files go, so no old model pairs with the new options
            for stale in (*RUN_MODELS, "history.json"):
                (out / stale).unlink(missing_ok=True)
        # run.json first: a checkpoint (model.npz) then always has the options that --resume reads,
        # even when the process is killed between writing the model and the run's files
        started = f"resumed after sweep {done}" if args.resume else "started: no sweep finished yet"
        _write_json(out / "run.json", {**run, "status": started})

    saved = {"sweeps": None}  # the sweep whose network model.npz holds

    def save_run(model):
        from tnlearn.interrupts import DeferredInterrupt

        with DeferredInterrupt() as interrupt:  # Ctrl-C waits until the model and its history are both written
            save_model(model, out / "model.npz")  # atomic: a kill leaves the old or the new file
            _write_json(out / "history.json", [asdict(r) for r in model.history_.records])
            saved["sweeps"] = len(model.history_)
        interrupt.check()

    def checkpoint(model):
        n = len(model.history_)
        if root and (n % args.checkpoint_every == 0 or n == args.sweeps):
            save_run(model)
            _write_json(out / "run.json", {**run, "status": f"checkpoint after sweep {n}"})

    t_fit = time.perf_counter()
    try:
        fit_extra = {"comm": comm} if getattr(args, "model", "mps") in DISTRIBUTED else {}
        clf.fit(X_train, ds.y_train, eval_set=(X_test, ds.y_test), on_sweep=checkpoint, **fit_extra)
    except KeyboardInterrupt:
        if not root:  # every rank stops after the same bond; rank 0 reports
            return 130
        saved = ""
        if clf.saves_mid_sweep and hasattr(clf, "head_"):  # the bond in progress was finished
            save_model(clf, out / "interrupted.npz")
            saved = f"; the network as it was mid-sweep (label on site {clf.head_.center}) is in {out}/interrupted.npz"
        if not (out / "model.npz").exists():  # no sweep finished: there is nothing --resume could continue
            how = "no sweep finished, so there is nothing to resume: run the same command again with --overwrite"
            if saved:
                how += f" (`tnlearn evaluate {out}/interrupted.npz` scores the mid-sweep network)"
        elif getattr(args, "model", "mps") in RESUMABLE:
            how = f"continue with `tnlearn train --resume {out} --sweeps {args.sweeps}`"
        else:
            how = f"--resume continues --model {' / '.join(RESUMABLE)} runs only; run the {args.model} training again"
        print(f"\ninterrupted: {_last_checkpoint(clf, out, args)}{saved}; {how}", file=sys.stderr)
        return 130
    except FloatingPointError as exc:
        raise FloatingPointError(f"{exc}; {_last_checkpoint(clf, out, args)} (the last good state)") from exc
    fit_seconds = time.perf_counter() - t_fit
    if not clf.history_:
        raise FloatingPointError("the first sweep diverged and was rolled back (see the warning above): nothing "
                                 "was trained; try --dtype float64, --no-precondition or a smaller --bond-dim")
    if not root:
        return 0
    kept = getattr(clf, "best_sweep_", None) or len(clf.history_)
    if saved["sweeps"] != len(clf.history_) or kept != len(clf.history_):
        save_run(clf)  # the fitted network is not the last checkpoint's (early stopping, a rolled-back sweep)
    (out / "interrupted.npz").unlink(missing_ok=True)  # an earlier interruption's mid-sweep network: superseded
    last = clf.history_[kept - 1]
    run.update({"status": "finished", "final_train_accuracy": last.train_accuracy,
                "final_test_accuracy": last.test_accuracy, "kept_sweep": kept, "fit_seconds": fit_seconds})
    if clf.history_.meta.get("stopped"):
        run["stopped"] = clf.history_.meta["stopped"]
    trained_with = {k: clf.history_.meta[k] for k in ("loss", "n_iter") if k in clf.history_.meta}
    run.update(trained_with)  # what loss="auto" / n_iter="auto" chose
    size = clf.size_label + (f", {trained_with['loss']} x{trained_with['n_iter']}" if len(trained_with) == 2 else "")
    run["total_seconds"] = time.perf_counter() - t0
    _write_json(out / "run.json", run)  # the results first: plots are the slow, optional part
    plots = write_run_plots([clf.history_], [size], out) if args.plots else []
    which = (f"after {kept} sweep{'s' * (kept != 1)}" if kept == len(clf.history_)
             else f"of sweep {kept} of {len(clf.history_)}")
    print(f"test accuracy {last.test_accuracy:.4f} {which} ({getattr(args, 'model', 'mps')}, {size}) "
          f"in {run['total_seconds']:.1f} s; wrote history.json, run.json, model.npz"
          f"{f' and {len(plots)} plots' if plots else ' (no plots: tnlearn plot draws them)'} to {out}")
    return 0


# --------------------------------------------------------------------- evaluate
def _format_confusion(cm, classes):
    width = max(5, max(len(str(c)) for c in classes) + 1, len(str(cm.max())) + 1)
    lines = ["confusion matrix (rows: true class, columns: predicted class)",
             "true\\pred".rjust(9) + "".join(str(c).rjust(width) for c in classes)]
    lines += [str(c).rjust(9) + "".join(str(v).rjust(width) for v in row) for c, row in zip(classes, cm)]
    return "\n".join(lines)


def cmd_evaluate(args):
    from sklearn.metrics import confusion_matrix

    from tnlearn.io import load_model

    target = Path(args.model)
    model_path = target / "model.npz" if target.is_dir() else target
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found: pass a run directory or a model .npz file")
    run_path = model_path.parent / "run.json"
    run = _read_json(run_path, "run") if run_path.is_file() else {}
    saved = run.get("options", {})
    dataset = args.dataset or run.get("dataset")
    if dataset is None:
        raise ValueError(f"cannot tell which data set {model_path} was trained on (no {run_path}); "
                         "pass --dataset")
    pool = args.pool if args.pool is not None else run.get("pool")
    order = args.order or run.get("order", "row")
    seed = args.seed if args.seed is not None else saved.get("seed", 0)
    data_dir = args.data_dir if args.data_dir is not None else saved.get("data_dir")
    model = load_model(model_path)
    ds, _, X_test = _load_data(dataset, data_dir, pool, None, seed, args.download, order)
    pred = model.predict(X_test)
    correct = int(np.sum(pred == ds.y_test))
    print(f"{model_path}: {ds.name} test split ({order} order, pool {pool or 'default'}): "
          f"accuracy {correct / len(pred):.6f} ({correct}/{len(pred)} correct)")
    classes = np.unique(np.concatenate([model.classes_, ds.y_test]))
    print(_format_confusion(confusion_matrix(ds.y_test, pred, labels=classes), classes))
    return 0


# ------------------------------------------------------------------------- plot
def cmd_plot(args):
    from tnlearn.plotting import write_run_plots

    histories = [_load_history(d) for d in args.run_dirs]
    if args.labels is not None:
        if len(args.labels) != len(args.run_dirs):
            raise ValueError(f"got {len(args.labels)} --labels for {len(args.run_dirs)} run directories; "
                             "pass one label per run")
        labels = args.labels
    else:
        labels = []
        for d in args.run_dirs:
            run_path = Path(d) / "run.json"
            opts = _read_json(run_path, "run").get("options", {}) if run_path.is_file() else {}
            model, m = opts.get("model", "mps"), opts.get("bond_dim")
            if model == "tt-net":
                labels.append(f"tt-net rank {opts.get('tt_rank')}")
            elif model == "tn-cnn":
                labels.append(f"tn-cnn {'-'.join(map(str, opts.get('cnn_channels') or []))} rank {opts.get('tt_rank')}")
            elif m is not None:
                labels.append(f"m={m}" if model == "mps" else f"{model} m={m}")
            else:
                labels.append(Path(d).resolve().name)
        if len(set(labels)) < len(labels):  # e.g. two runs with the same m: use the directory names
            labels = [Path(d).resolve().name for d in args.run_dirs]
    out = args.out or (args.run_dirs[0] if len(args.run_dirs) == 1 else "plots")
    entropies = None
    models = [Path(d) / "model.npz" for d in args.run_dirs]
    if all(m.is_file() for m in models):  # every run has its model: add the entanglement profiles
        from tnlearn.io import load_model
        from tnlearn.physics import entanglement_entropies

        loaded = [load_model(m) for m in models]
        if all(hasattr(model, "head_") for model in loaded):  # MPS heads (a TT-net has none)
            entropies = [entanglement_entropies(model) for model in loaded]
    for path in write_run_plots(histories, labels, out, entropies):
        print(path)
    return 0


# ------------------------------------------------------------------------ parser
def build_parser():
    """The ``tnlearn`` argument parser (subcommands ``train``, ``evaluate``, ``plot``)."""
    from tnlearn import __version__

    parser = argparse.ArgumentParser(prog="tnlearn", description="Train and inspect matrix-product-state "
                                     "classifiers trained by DMRG sweeps.")
    parser.add_argument("--version", action="version", version=f"tnlearn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a tensor-network classifier and write a run directory",
                       description="Train an MPS, conv-mps, TT-net or tn-cnn classifier by sweeps; write "
                                   "history.json, run.json, model.npz and plots into --out.")
    _data_options(p, "digits")
    p.add_argument("--model", choices=MODELS, default="mps",
                   help="mps: MPS classifier on the (pooled) pixels; conv-mps: a tensor-network conv stage "
                        "over patches of the full-resolution image under an MPS head; tt-net: TT dense "
                        "layer + ReLU + dense output; tn-cnn: TT convolutions + TT dense layer + dense output "
                        "(default: mps)")
    p.add_argument("--bond-dim", type=_positive_int, default=16, metavar="M",
                   help="max bond dimension of the MPS (head) (default: 16)")
    p.add_argument("--sweeps", type=_positive_int, default=4, metavar="S", help="full sweeps (default: 4)")
    p.add_argument("--cutoff", type=float, default=1e-10, metavar="C", help="SVD cutoff (default: 1e-10)")
    p.add_argument("--loss", choices=("auto", "mse", "cross_entropy"), default=None,
                   help="loss (default: auto, cross_entropy when the training set has at least one sample per two "
                        "parameters of a merged block, bond-dim^2 x 4 x classes with the trig map, else mse)")
    p.add_argument("--solver", choices=("gd", "cg"), default="gd", help="local solver (default: gd)")
    p.add_argument("--n-iter", type=_positive_int_or_auto, default=None, metavar="K",
                   help="solver iterations per bond, or auto: 1 with mse, 3 with cross_entropy (default: mps auto; "
                        "conv-mps 1)")
    p.add_argument("--precondition", action=argparse.BooleanOptionalAction, default=None,
                   help="Kronecker-factored data preconditioner for the local steps (default: the estimator's)")
    p.add_argument("--damping", type=float, default=None, metavar="LAMBDA",
                   help="relative damping of the preconditioner (default: the estimator's)")
    p.add_argument("--truncation", choices=("data", "svd"), default="data",
                   help="split: data-metric SVD or plain SVD (default: data)")
    p.add_argument("--alpha", type=_non_negative_float, default=None, metavar="A",
                   help="L2 penalty alpha/2 |W|^2 on the network (default: the estimator's 'auto': "
                        "3 (M/64)^2 max(1, 8000/n_samples), M the bond dimension)")
    p.add_argument("--early-stopping", action="store_true",
                   help="hold out --validation-fraction of the training images, stop when their accuracy has not "
                        "improved for --n-iter-no-change sweeps and keep the best sweep's network (mps model)")
    p.add_argument("--validation-fraction", type=float, default=None, metavar="F",
                   help="share held out by --early-stopping (default: 0.1)")
    p.add_argument("--n-iter-no-change", type=_positive_int, default=None, metavar="K",
                   help="sweeps without validation gain before --early-stopping stops (default: 2)")
    p.add_argument("--n-train", type=_positive_int, metavar="N", help="random training subset of N images")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="(default: float32)")
    p.add_argument("--backend", choices=("numpy", "cupy"), default=None,
                   help="array backend: numpy (CPU) or cupy (CUDA GPU, needs the gpu extra); "
                        "default: numpy, or with --resume the run's own")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-sweep lines")
    p.add_argument("--no-plots", dest="plots", action="store_false",
                   help="skip the plots (model.npz, history.json and run.json are written first either way; "
                        "`tnlearn plot RUNDIR` draws them later)")
    p.add_argument("--out", metavar="RUNDIR", help="run directory to write (a new run)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --out: replace the trained run already in RUNDIR (its model and history)")
    p.add_argument("--resume", metavar="RUNDIR", help="continue the run in RUNDIR up to --sweeps sweeps in total "
                   "(its data and model options come from RUNDIR/run.json)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="K",
                   help="save model.npz and history.json every K sweeps (default: 1)")
    g = p.add_argument_group("conv-mps options")
    g.add_argument("--patch", type=_positive_int, default=2, metavar="P", help="patch side (default: 2)")
    g.add_argument("--channels", type=_positive_int, default=4, metavar="C",
                   help="conv output channels = head local dimension (default: 4)")
    g.add_argument("--conv-bond", type=_positive_int, default=None, metavar="D",
                   help="max conv bond dimension (default: exact)")
    g = p.add_argument_group("tt-net options")
    g.add_argument("--tt-rank", type=_positive_int_or_auto, default=None, metavar="R",
                   help="max TT-rank, or 'auto' (tt-net): ranks learned from --tt-max-rank down by a Bayesian "
                        "low-rank (ARD) prior, Hawkins & Zhang (default: 4 for tt-net, 8 for tn-cnn's dense layer)")
    g.add_argument("--tt-max-rank", type=_positive_int, default=8, metavar="R",
                   help="starting (largest) TT-rank of --tt-rank auto (default: 8, the largest that keeps a "
                        "28x28 input's TT layer >= 1,000x smaller than the dense one: 1,170x)")
    g.add_argument("--tt-cores", type=_tt_cores, default=5, metavar="K",
                   help="TT cores; the input is zero-padded to a power of two (default: 5: 784 -> 4^5)")
    g.add_argument("--epochs-per-bond", type=_epochs_or_auto, default="auto", metavar="E",
                   help="passes of minibatch Adam per bond, or 'auto': half an epoch and at least 100 steps "
                        "(default: auto)")
    g.add_argument("--learning-rate", type=float, default=2e-3, metavar="LR", help="Adam step (default: 2e-3)")
    g.add_argument("--lr-decay", type=float, default=1.0, metavar="F",
                   help="Adam step factor per sweep (default: 1; 0.5 helped on Fashion-MNIST)")
    g = p.add_argument_group("tn-cnn options (also --tt-rank for its dense TT layer, and the Adam options above)")
    g.add_argument("--cnn-channels", type=_positive_int, nargs="+", default=[16, 32], metavar="C",
                   help="output channels of each TT convolution stage, each followed by ReLU and 2x2 max pooling "
                        "(default: 16 32)")
    g.add_argument("--kernel-size", type=_positive_int, default=3, metavar="K", help="kernel side (default: 3)")
    g.add_argument("--conv-rank", type=_positive_int, default=None, metavar="R",
                   help="max TT-rank of the convolution kernels (default: exact)")
    g.add_argument("--n-hidden", type=_non_negative_int, default=256, metavar="H",
                   help="units of the dense TT layer after the convolutions; 0: none, the output layer reads the "
                        "feature map (default: 256)")
    p.add_argument("--distributed", choices=("auto", "mpi", "none"), default="auto",
                   help="data-parallel training over MPI ranks: auto (default) uses MPI when started by "
                        "mpiexec/srun with several ranks; needs pip install 'tnlearn[mpi]'")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test accuracy and confusion matrix of a saved model",
                       description="Evaluate a saved model on its data set's test split; data options "
                                   "default to the run's run.json.")
    p.add_argument("model", metavar="RUNDIR_OR_MODEL", help="run directory or model .npz file")
    _data_options(p, None)
    p.add_argument("--seed", type=int, metavar="K", help="digits train/test split seed (default: the run's)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plot", help="plot and compare the histories of runs",
                       description="Write accuracy.png, truncation.png and bond_dims.png comparing runs, "
                                   "ranks.png (TT-rank per bond and compression against sweep) for tt-net runs, "
                                   "and entanglement.png (entropy across every bond, in bits) when every "
                                   "RUNDIR holds its MPS model.npz.")
    p.add_argument("run_dirs", nargs="+", metavar="RUNDIR", help="run directories holding history.json")
    p.add_argument("--out", metavar="DIR", help="output directory (default: the RUNDIR, or ./plots for several)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="one legend label per run (default: the run's size, e.g. m=20 or tt-net rank 4)")
    p.set_defaults(func=cmd_plot)
    return parser


def _message(exc):
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())  # one line, even for multi-line messages


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Print a warning as one ``tnlearn: warning: ...`` line (not Python's file:line report)."""
    print(f"tnlearn: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file, flush=True)


def main(argv=None):
    """Run the command line; returns the exit status (0 success, 2 usage or expected error)."""
    from sklearn.exceptions import NotFittedError

    from tnlearn.backend import BackendUnavailableError
    from tnlearn.datasets import DatasetUnavailableError, IDXFormatError
    from tnlearn.distributed import MPIUnavailableError, abort_parallel_run, launched_rank
    from tnlearn.io import ModelFormatError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.given_options = _given_options(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one line each, like the errors
            return args.func(args)
    except BrokenPipeError:  # e.g. `tnlearn evaluate RUNDIR | head`: the reader left, nothing is wrong
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (keep the interpreter from reporting the pipe at exit)
        return 0
    except (ValueError, OSError, DatasetUnavailableError, IDXFormatError, ModelFormatError,
            NotFittedError, FloatingPointError, MPIUnavailableError, BackendUnavailableError) as exc:
        rank = launched_rank()
        where = f" (MPI rank {rank})" if rank else ""
        print(f"tnlearn: error{where}: {_message(exc)}", file=sys.stderr, flush=True)
        abort_parallel_run(2)  # under mpiexec: end every rank, none is left waiting in a collective
        return 2
    except KeyboardInterrupt:
        print("tnlearn: interrupted", file=sys.stderr)
        return 130


def run():
    """The ``tnlearn`` console command: :func:`main` on ``sys.argv``, then a quick exit.

    When a command is done, most of what is left in memory are the imported
    libraries' objects (scikit-learn imports scipy.stats, and pandas when it
    is installed), and the interpreter's garbage collections at exit would
    walk them all: ~0.3 s of a short run.  They are frozen first
    (``gc.freeze``), so the exit skips them; streams, files and ``atexit``
    handlers (MPI's among them) close and run as usual.
    """
    import gc

    status = main()
    gc.freeze()
    return status


if __name__ == "__main__":
    sys.exit(run())
