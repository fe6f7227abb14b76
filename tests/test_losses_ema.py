import copy
import math

import torch
from torch import nn

from gantrain import losses
from gantrain.train.ema import ema_beta, update_ema


def test_logistic_losses_against_hand_values():
    real = torch.tensor([2.0, -1.0])
    fake = torch.tensor([0.0, 3.0])
    expected = [math.log1p(math.exp(-2.0)) + math.log(2.0), math.log1p(math.exp(1.0)) + math.log1p(math.exp(3.0))]
    assert torch.allclose(losses.d_logistic_loss(real, fake), torch.tensor(expected))
    assert torch.allclose(losses.g_nonsaturating_loss(fake), torch.tensor([math.log(2.0), math.log1p(math.exp(-3.0))]))
    # d/dl softplus(-l) = -sigmoid(-l): G's gradient stays large when D rejects its samples (l << 0).
    logit = torch.tensor(-5.0, requires_grad=True)
    losses.g_nonsaturating_loss(logit).backward()
    assert torch.isclose(logit.grad, -torch.sigmoid(torch.tensor(5.0)))


def test_r1_matches_closed_form_for_linear_d():
    torch.manual_seed(0)
    w = torch.randn(3 * 4 * 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = x.flatten(1) @ w
    assert torch.allclose(losses.r1_penalty(logits, x), w.square().sum().expand(5))


def test_ema_beta_half_life_and_rampup():
    assert ema_beta(batch=32, nimg=10**9, ema_kimg=10, rampup=None) == 0.5 ** (32 / 10000)
    assert ema_beta(batch=32, nimg=1000, ema_kimg=10, rampup=0.05) == 0.5 ** (32 / 50)
    assert ema_beta(batch=32, nimg=0, ema_kimg=10, rampup=0.05) == 0.0  # first step copies


def test_ema_update_by_hand_over_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = copy.deepcopy(model)
    expected = [p.detach().clone() for p in ema.parameters()]
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 3))  # moves the batch-norm running stats
        beta = ema_beta(batch=16, nimg=16 * step, ema_kimg=0.1, rampup=0.5)
        expected = [beta * e + (1 - beta) * p.detach() for e, p in zip(expected, model.parameters())]
        update_ema(ema, model, beta)
    for got, want in zip(ema.parameters(), expected):
        assert torch.allclose(got, want, atol=1e-6)
    for got, want in zip(ema.buffers(), model.buffers()):
        assert torch.equal(got, want)  # buffers are copied, not averaged


def test_ema_start_copies_g_until_then_and_averages_after(digits16, tmp_path):
    """train.ema_start (BigGAN's): G_ema is G, buffers and all, for the first 0.032 kimg (2 steps of 16),
    then an average: after the third step it differs from G and from the G of the step before."""
    from conftest import tiny_config
    from gantrain.data.stream import read_manifest
    from gantrain.engines.single import SingleEngine
    from gantrain.train.loop import Trainer, resolve

    cfg = tiny_config(digits16, train={"ema_start": 0.032, "ema_kimg": 0.05, "ema_rampup": None})
    trainer = Trainer(resolve(cfg, read_manifest(digits16), 1), tmp_path, SingleEngine("cpu"))
    try:
        for _ in range(2):
            trainer.train_step()
            for name, value in trainer.G_model.state_dict().items():
                assert torch.equal(trainer.G_ema.state_dict()[name], value), name
        before = {k: v.clone() for k, v in trainer.G_model.state_dict().items()}
        trainer.train_step()
        ema, now = trainer.G_ema.state_dict(), trainer.G_model.state_dict()
        weights = [k for k, v in now.items() if k.endswith("weight")]
        assert all(not torch.equal(ema[k], now[k]) and not torch.equal(ema[k], before[k]) for k in weights)
    finally:
        trainer.loader.close()
