"""scikit-learn parameter declarations shared by the estimators (``_parameter_constraints``)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from tnlearn.backend import Backend
from tnlearn.embeddings import FeatureMap

POSITIVE_INT = [Interval(Integral, 1, None, closed="left")]
NON_NEGATIVE = [Interval(Real, 0, None, closed="left")]
POSITIVE = [Interval(Real, 0, None, closed="neither")]
DTYPE = [StrOptions({"float32", "float64"}), type, np.dtype]
BACKEND = [StrOptions({"numpy", "cupy"}), Backend]
FEATURE_MAP = [str, FeatureMap, callable]
CHUNK_SIZE = [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")]
RANDOM_STATE = ["random_state", np.random.Generator]
COMMON = {"dtype": DTYPE, "backend": BACKEND, "random_state": RANDOM_STATE, "verbose": ["verbose"]}
