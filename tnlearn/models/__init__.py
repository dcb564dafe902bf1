"""scikit-learn estimators built on the sweep engine."""

from tnlearn.models.conv_mps import ConvMPSClassifier
from tnlearn.models.mps_classifier import MPSClassifier
from tnlearn.models.tt_net import TTNetClassifier

__all__ = ["ConvMPSClassifier", "MPSClassifier", "TTNetClassifier"]
