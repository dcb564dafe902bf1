import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's real 8x8 digits, flattened, in [0, 1], with a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture
def tiny_problem(rng):
    """A small synthetic classification problem: 120 samples, 10 features in [0, 1], 3 classes."""
    X = rng.random((120, 10))
    y = (X[:, :3].sum(axis=1) * 1.7).astype(int) % 3
    return X, y


def random_head(rng, n_sites=6, d=2, n_labels=3, bond=4, center=0, dtype=np.float64):
    """An MPSHead with random (non-canonical) cores, for exactness tests."""
    from tnlearn.backend import get_backend
    from tnlearn.networks import canonicalize_around
    from tnlearn.stages.mps import MPSHead

    dims = [1] + [bond] * (n_sites - 1) + [1]
    cores = []
    for i in range(n_sites):
        shape = (dims[i], d, n_labels, dims[i + 1]) if i == center else (dims[i], d, dims[i + 1])
        cores.append(rng.standard_normal(shape))
    cores, log_norm = canonicalize_around(cores, center)
    return MPSHead([c.astype(dtype) for c in cores], center, log_norm, get_backend("numpy"))
