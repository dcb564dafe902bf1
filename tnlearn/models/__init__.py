"""scikit-learn estimators built on the sweep engine."""

from tnlearn.models.conv_mps import ConvMPSClassifier
from tnlearn.models.mps_classifier import MPSClassifier
from tnlearn.models.tn_cnn import TNCNNClassifier
from tnlearn.models.tt_net import TTNetClassifier

#: every estimator by class name (what a model file's header records)
ESTIMATORS = {cls.__name__: cls for cls in (MPSClassifier, ConvMPSClassifier, TTNetClassifier, TNCNNClassifier)}

__all__ = ["ConvMPSClassifier", "ESTIMATORS", "MPSClassifier", "TNCNNClassifier", "TTNetClassifier"]
