"""tnlearn: tensor-network machine learning trained by DMRG sweeps, built on quimb."""

__version__ = "0.1.0"

from tnlearn.backend import Backend, BackendUnavailableError, get_backend
from tnlearn.embeddings import FEATURE_MAPS, FeatureMap, embed, get_feature_map, poly_map, trig_map
from tnlearn.history import History, SweepRecord
from tnlearn.models import ConvMPSClassifier, MPSClassifier, TNCNNClassifier, TTNetClassifier
from tnlearn.networks import head_to_quimb, product_state, quimb_to_cores
from tnlearn.stages import ConvStage, MPSHead, TTConv, TTMatrix, tt_from_dense
from tnlearn.truncation import TruncationInfo, truncated_svd

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "ConvMPSClassifier",
    "ConvStage",
    "FEATURE_MAPS",
    "FeatureMap",
    "History",
    "MPSClassifier",
    "MPSHead",
    "SweepRecord",
    "TNCNNClassifier",
    "TTConv",
    "TTMatrix",
    "TTNetClassifier",
    "TruncationInfo",
    "__version__",
    "embed",
    "get_backend",
    "get_feature_map",
    "head_to_quimb",
    "poly_map",
    "product_state",
    "quimb_to_cores",
    "trig_map",
    "truncated_svd",
    "tt_from_dense",
]
