"""Gradients of the MPS head with respect to its inputs (what the conv stage back-propagates)."""

import numpy as np
import pytest

from tnlearn.backend import get_backend
from tnlearn.stages.conv_sweeps import head_input_gradient, output_loss
from tnlearn.stages.mps import MPSHead, right_canonicalize
from tnlearn.sweeps import SweepOptions, build_environments


def _random_head(rng, n_sites=6, d=3, n_labels=4, dims=(1, 3, 5, 5, 5, 3, 1), log_shift=0.0):
    cores = [rng.standard_normal((dims[i], d, dims[i + 1])) for i in range(n_sites)]
    cores[0] = rng.standard_normal((1, d, n_labels, dims[1]))  # a label map that is not a product
    cores, log_norm = right_canonicalize(cores)
    return MPSHead(cores, 0, log_norm + log_shift, get_backend("numpy"))


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_input_gradient_matches_finite_differences(rng, loss):
    head = _random_head(rng, log_shift=0.7)
    n_sites, n, d = 6, 9, 3
    phi = rng.standard_normal((n_sites, n, d))
    y = np.eye(4)[rng.integers(0, 4, n)]

    def value(p):
        f = head.decision_function(p, normalized=True)
        return output_loss(f, y, loss, np)[0] / n

    envs = build_environments(head, phi, SweepOptions(max_bond=8))
    C, grad = head_input_gradient(head, envs, phi, y, chunk_size=4, loss=loss)  # several chunks
    assert C == pytest.approx(value(phi), rel=1e-12)
    eps = 1e-6
    for k in range(n_sites):
        direction = np.zeros_like(phi)
        direction[k] = rng.standard_normal((n, d))
        numeric = (value(phi + eps * direction) - value(phi - eps * direction)) / (2 * eps)
        assert np.sum(grad * direction) == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_cosine_loss_ignores_the_output_scale(rng):
    f = rng.standard_normal((5, 3))
    y = np.eye(3)[[0, 1, 2, 0, 1]]
    scaled = f * rng.uniform(0.1, 10, size=(5, 1))
    assert output_loss(f, y, "cosine", np)[0] == pytest.approx(output_loss(scaled, y, "cosine", np)[0])
    with pytest.raises(ValueError, match="choose 'mse' or 'cosine'"):
        output_loss(f, y, "hinge", np)


def test_needs_the_label_on_site_0(rng):
    head = _random_head(rng)
    phi = rng.standard_normal((6, 4, 3))
    envs = build_environments(head, phi, SweepOptions(max_bond=8))
    head.center = 5
    with pytest.raises(ValueError, match="label on site 0"):
        head_input_gradient(head, envs, phi, np.eye(4)[[0, 1, 2, 3]])
