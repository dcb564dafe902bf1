"""Trainable stages: each knows how to merge, split and contract its own cores (:class:`Stage`)."""

from tnlearn.stages.base import Stage
from tnlearn.stages.conv import ConvStage
from tnlearn.stages.mps import MPSHead
from tnlearn.stages.tt import TTMatrix, tt_from_dense
from tnlearn.stages.tt_conv import TTConv

__all__ = ["ConvStage", "MPSHead", "Stage", "TTConv", "TTMatrix", "tt_from_dense"]
