"""Minibatch layers, conditioning heads and spectral normalization, on their own."""

import pytest
import torch

from gantrain import config as config_mod
from gantrain.models import DataSpec, build
from gantrain.models.layers import DHead, MinibatchDiscrimination, MinibatchStdDev


def test_minibatch_stddev_tells_a_collapsed_batch_from_a_diverse_one():
    layer = MinibatchStdDev(group=4)
    same = torch.randn(1, 3, 4, 4).expand(8, 3, 4, 4)
    diverse = torch.randn(8, 3, 4, 4)
    out_same, out_diverse = layer(same), layer(diverse)
    assert out_same.shape == (8, 4, 4, 4)
    assert torch.equal(out_same[:, :3], same)
    assert out_same[:, 3].max() < 1e-3 and out_diverse[:, 3].min() > 0.3
    assert MinibatchStdDev(group=3)(torch.randn(6, 5)).shape == (6, 6)  # [N, F] works too
    assert MinibatchStdDev(group=8)(torch.randn(6, 5)).shape == (6, 6)  # the group shrinks to the batch
    with pytest.raises(ValueError, match="does not divide the batch of 6"):
        layer(torch.randn(6, 5))


def test_minibatch_stddev_is_the_group_standard_deviation():
    x = torch.tensor([[1.0], [2.0], [3.0], [5.0]])  # group of 4 on one feature: population std of 1, 2, 3, 5
    expected = torch.tensor([1.0, 2.0, 3.0, 5.0]).std(unbiased=False)
    assert torch.allclose(MinibatchStdDev(group=4)(x)[:, 1], expected.expand(4), atol=1e-4)


def test_minibatch_discrimination_separates_identical_from_diverse():
    layer = MinibatchDiscrimination(10, kernels=6)
    same = torch.randn(1, 10).expand(5, 10)
    out = layer(same)
    assert out.shape == (5, 16)
    assert torch.allclose(out[:, 10:], torch.full((5, 6), 4.0))  # exp(0) for each of the 4 other samples
    diverse = layer(torch.randn(5, 10) * 10)
    assert diverse[:, 10:].max() < 0.5


def test_projection_and_auxiliary_heads():
    torch.manual_seed(0)
    head = DHead(4, num_classes=3, conditioning="projection")
    f, c = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    expected = head.linear(f).flatten() + (head.embed.weight[c] * f).sum(1)
    assert torch.allclose(head(f, c, features=False), expected)
    aux = DHead(4, num_classes=3, conditioning="acgan")
    out = aux(f, c, features=True)
    assert out.class_logits.shape == (5, 3) and torch.equal(out.features, f)
    assert DHead(4).embed is None and DHead(4)(f, None, True).class_logits is None


def test_spectral_norm_bounds_the_top_singular_value():
    cfg = config_mod.ModelConfig(channels=8, max_channels=32, spectral_norm="d", norm="none")
    _, D = build(cfg, DataSpec(16, 1, 0))
    x = torch.randn(4, 1, 16, 16)
    for _ in range(30):  # power iterations happen in training forwards
        D(x)
    weights = [m.weight for m in D.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert weights and all(hasattr(m, "parametrizations") for m in D.modules()
                           if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    sigmas = [torch.linalg.matrix_norm(w.detach().flatten(1), 2).item() for w in weights]
    assert max(abs(s - 1) for s in sigmas) < 0.05, sigmas


def test_conditioning_changes_what_d_sees():
    spec = DataSpec(16, 1, 10)
    x = torch.randn(4, 1, 16, 16)
    for conditioning in ("concat", "acgan", "projection"):
        cfg = config_mod.ModelConfig(channels=8, max_channels=32, conditional=True, conditioning=conditioning,
                                     norm="none")
        G, D = build(cfg, spec)
        a, b = D(x, torch.zeros(4, dtype=torch.long)), D(x, torch.ones(4, dtype=torch.long))
        if conditioning == "acgan":  # the label only enters through the auxiliary loss
            assert torch.equal(a, b) and D(x, None, features=True).class_logits.shape == (4, 10)
        else:
            assert not torch.equal(a, b)
        assert G(torch.randn(4, G.z_dim), torch.arange(4)).shape == (4, 1, 16, 16)
