"""The interface every trainable stage implements, so that one sweep order and one split serve them all.

A *stage* is a chain of small tensors (cores) trained by two-site sweeps: a
sweep visits the bonds in the order :func:`tnlearn.sweeps.bond_sequence`
gives (left to right, then back), and at every bond

1. ``block = stage.merge(j)`` contracts cores ``j`` and ``j + 1``;
2. the model's local solver updates the block: the MPS head from cached
   per-sample environments (:func:`tnlearn.sweeps.sweep`), the conv stage by a
   gradient back-propagated through the head
   (:func:`tnlearn.stages.conv_sweeps.conv_half_sweep`), the TT layer and the
   TT convolutions by minibatch Adam (:class:`tnlearn.models.TTNetClassifier`,
   :class:`tnlearn.models.TNCNNClassifier`);
3. ``stage.split(j, block, direction, truncation)`` cuts it back into two
   cores with the truncated SVD of :func:`tnlearn.truncation.split_matrix`,
   which chooses the new bond dimension, and moves the orthogonality centre in
   ``direction``.

:class:`~tnlearn.stages.mps.MPSHead`, :class:`~tnlearn.stages.tt.TTMatrix`,
:class:`~tnlearn.stages.conv.ConvStage` and :class:`~tnlearn.stages.tt_conv.TTConv`
implement it (``tests/test_stages.py``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Stage(Protocol):
    """A chain of cores swept bond by bond (see the module docstring).

    Attributes
    ----------
    n_sites : int
        Number of cores; the bonds are ``0 .. n_sites - 2``.
    bond_dims : list of int
        Dimensions of the ``n_sites - 1`` internal bonds (TT-ranks for a TT layer).
    n_params : int
        Trainable numbers in the cores.
    """

    @property
    def n_sites(self) -> int: ...

    @property
    def bond_dims(self) -> list: ...

    @property
    def n_params(self) -> int: ...

    def merge(self, j):
        """The block of cores ``j`` and ``j + 1`` contracted over their bond."""

    def split(self, j, block, direction, truncation, **kwargs):
        """Cut ``block`` back into cores ``j``, ``j + 1`` by truncated SVD; returns a ``TruncationInfo``."""
