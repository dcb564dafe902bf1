"""The Stage interface: every stage merges and splits through the one truncated-SVD split."""

import numpy as np
import pytest

from tnlearn.backend import get_backend
from tnlearn.stages import ConvStage, MPSHead, Stage, TTConv, TTMatrix
from tnlearn.stages.mps import init_cores
from tnlearn.truncation import Truncation, split_matrix


def _stages():
    rng = np.random.default_rng(0)
    be = get_backend("numpy")
    cores, log_norm = init_cores(6, 2, 3, 4, rng, np.float64)
    head = MPSHead(cores, 0, log_norm, be)
    tt = TTMatrix.random((2, 3, 2), (3, 2, 2), 3, rng, np.float64, be)
    conv_cores, conv_log = init_cores(4, 2, 2, 3, rng, np.float64)
    conv = ConvStage(MPSHead(conv_cores, 0, conv_log, be), 2, 2, (4, 4))
    tt_conv = TTConv.random((5, 5, 4), 6, (3, 3), rng, None, padding=1, pool=2, dtype=np.float64, backend=be)
    return {"mps": head, "tt": tt, "conv": conv, "tt-conv": tt_conv}


@pytest.mark.parametrize("name", ["mps", "tt", "conv", "tt-conv"])
def test_every_stage_implements_the_interface(name):
    stage = _stages()[name]
    assert isinstance(stage, Stage)
    assert len(stage.bond_dims) == stage.n_sites - 1 and stage.n_params > 0


@pytest.mark.parametrize("name", ["mps", "tt", "conv", "tt-conv"])
def test_merge_then_exact_split_leaves_the_network_unchanged(name):
    """An untruncated split of a merged block moves the centre, not what the network computes."""
    stage = _stages()[name]

    def computes():
        if name == "tt":
            return stage.to_dense()
        if name == "tt-conv":
            return stage.forward(np.random.default_rng(2).standard_normal((3, 5, 5, 4)))[0]
        net = stage.net if name == "conv" else stage
        phi = np.random.default_rng(2).random((net.n_sites, 5, 2))
        return net.decision_function(phi)

    before = computes()
    info = stage.split(0, stage.merge(0), "right", Truncation())
    assert info.discarded_weight < 1e-20
    np.testing.assert_allclose(computes(), before, rtol=1e-10, atol=1e-12)
    if name in ("mps", "conv"):
        assert (stage.net if name == "conv" else stage).center == 1


@pytest.mark.parametrize("direction", ["right", "left"])
def test_split_matrix_puts_the_singular_values_on_the_side_of_the_new_centre(direction):
    M = np.random.default_rng(1).standard_normal((6, 8))
    left, right, info = split_matrix(M, direction, Truncation(max_bond=3))
    s = info.singular_values[:3]
    if direction == "right":  # left factor orthonormal columns, right = S Vh
        np.testing.assert_allclose(left.T @ left, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(right, axis=1), s, rtol=1e-12)
    else:  # right factor orthonormal rows, left = U S
        np.testing.assert_allclose(right @ right.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(left, axis=0), s, rtol=1e-12)
    assert info.kept == 3 and info.discarded_weight == pytest.approx(
        float(np.sum(info.singular_values[3:] ** 2) / np.sum(info.singular_values**2)))


def test_truncation_checks_its_arguments():
    with pytest.raises(ValueError, match="max_bond=0 must be an integer >= 1"):
        Truncation(max_bond=0)
    with pytest.raises(ValueError, match="cutoff_mode='sum'"):
        Truncation(cutoff_mode="sum")


def test_tt_split_right_leaves_a_left_orthonormal_core():
    tt = _stages()["tt"]
    tt.split(0, tt.merge(0), "right", Truncation(max_bond=2))
    c = tt.cores[0]
    mat = c.reshape(-1, c.shape[-1])
    np.testing.assert_allclose(mat.T @ mat, np.eye(c.shape[-1]), atol=1e-12)
    assert tt.bond_dims[0] == 2
