"""Trainable stages: each knows how to merge, split and contract its own cores."""

from tnlearn.stages.mps import MPSHead

__all__ = ["MPSHead"]
