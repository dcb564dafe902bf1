"""Training records: one :class:`SweepRecord` per full sweep, collected in a :class:`History`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class SweepRecord:
    """Diagnostics of one full sweep (left-to-right and back).

    Attributes
    ----------
    sweep : int
        1-based sweep number.
    loss : float
        Training loss after the sweep, averaged over samples.
    train_accuracy : float
    test_accuracy : float or None
        Accuracy on the evaluation set, when one was given.
    max_truncation_error, mean_truncation_error : float
        Largest and mean relative discarded weight over the sweep's splits.
    bond_dims : list of int
        Bond dimensions along the chain after the sweep.
    seconds : float
        Wall time of the sweep (evaluation excluded).
    truncation_errors : list of float
        Discarded weight of every split, in sweep order.
    stages : dict
        Per-stage diagnostics of multi-stage models, keyed by stage name
        (e.g. ``"conv"``): its ``bond_dims``, ``max_truncation_error``,
        ``loss_before`` / ``loss_after`` and ``seconds``; empty for a single MPS.
    validation_accuracy : float or None
        Accuracy on the held-out validation part (``early_stopping``).
    rejected_updates : int
        Bond updates of the sweep that the safeguard cut back or undone
        because they would have raised the training objective.
    data_loss : float or None
        ``loss`` without the L2 penalty (equal to it when ``alpha = 0``).
    tt_ranks : list of int or None
        TT-ranks of a TT layer after the sweep (TT-net).
    compression : float or None
        Parameters of the dense matrix a TT layer stands for over its TT parameters.
    n_params : int or None
        Parameters of the TT layer.
    """

    sweep: int
    loss: float
    train_accuracy: float
    test_accuracy: float | None
    max_truncation_error: float
    mean_truncation_error: float
    bond_dims: list
    seconds: float
    truncation_errors: list = field(default_factory=list)
    stages: dict = field(default_factory=dict)
    validation_accuracy: float | None = None
    rejected_updates: int = 0
    data_loss: float | None = None
    tt_ranks: list | None = None
    compression: float | None = None
    n_params: int | None = None

    @classmethod
    def from_splits(cls, sweep, loss, train_accuracy, test_accuracy, errors, bond_dims, seconds, stages=None,
                    **extra):
        """A record whose truncation summary comes from every split's discarded weight ``errors``.

        ``extra``: ``validation_accuracy``, ``rejected_updates``, ``data_loss``, ``tt_ranks``,
        ``compression``, ``n_params``.
        """
        return cls(
            sweep=sweep, loss=loss, train_accuracy=train_accuracy, test_accuracy=test_accuracy,
            max_truncation_error=float(max(errors)), mean_truncation_error=float(np.mean(errors)),
            bond_dims=bond_dims, seconds=seconds, truncation_errors=errors, stages=stages or {}, **extra,
        )

    def headline(self):
        """``"sweep   k  loss ...  train acc ...  [val acc ...]  [test acc ...]"``: the start of a progress line."""
        val = "" if self.validation_accuracy is None else f"  val acc {self.validation_accuracy:.4f}"
        test = "" if self.test_accuracy is None else f"  test acc {self.test_accuracy:.4f}"
        return f"sweep {self.sweep:3d}  loss {self.loss:.5g}  train acc {self.train_accuracy:.4f}{val}{test}"


@dataclass
class History:
    """A run's records, with JSON round-trip.

    Attributes
    ----------
    records : list of SweepRecord
    meta : dict
        Free-form run description (data set, hyperparameters).
    """

    records: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def append(self, record: SweepRecord):
        self.records.append(record)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def column(self, name):
        """Values of one field over the sweeps."""
        return [getattr(r, name) for r in self.records]

    def to_json(self):
        return {"meta": self.meta, "records": [asdict(r) for r in self.records]}

    @classmethod
    def from_json(cls, obj):
        if isinstance(obj, list):  # a bare list of records
            obj = {"meta": {}, "records": obj}
        return cls([SweepRecord(**r) for r in obj["records"]], dict(obj.get("meta", {})))

    def save(self, path):
        with open(path, "w") as fh:
            json.dump(self.to_json(), fh, indent=1)

    @classmethod
    def load(cls, path):
        with open(path) as fh:
            return cls.from_json(json.load(fh))
