"""scikit-learn estimators built on the sweep engine."""

from tnlearn.models.mps_classifier import MPSClassifier

__all__ = ["MPSClassifier"]
