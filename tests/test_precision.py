"""Mixed precision on CPU: bf16 autocast trains; fp16 loss scaling skips overflowing steps safely."""

import math

import pytest
import torch
from torch import nn

from conftest import tiny_config
from gantrain import losses
from gantrain.data.stream import read_manifest
from gantrain.engines.base import Net
from gantrain.engines.single import SingleEngine
from gantrain.train.loop import Trainer, resolve, run


def test_bf16_run_trains_and_stays_finite(digits16, tmp_path):
    result = run(tiny_config(digits16, engine={"precision": "bf16"}, loss={"r1": {"weight": 1.0, "interval": 2}},
                             train={"kimg": 0.064}), tmp_path)
    scalars = result["scalars"]
    assert all(math.isfinite(scalars[k]) for k in ("Loss/D", "Loss/G", "Loss/R1", "GradNorm/Gmain"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_every_penalty_trains_under_autocast(digits16, tmp_path, precision):
    """G's output is in the autocast dtype, the reals in fp32: every phase that mixes them (WGAN-GP's
    interpolation, R1, R2, drift, instance noise) must train. (WGAN-GP under bf16 once failed in lerp.)"""
    losses_ = {"name": "wgan-gp", "gp": {"weight": 10.0, "interval": 1}, "drift": {"weight": 0.001},
               "r1": {"weight": 1.0, "interval": 2}, "r2": {"weight": 1.0, "interval": 2}}
    result = run(tiny_config(digits16, engine={"precision": precision}, loss=losses_, train={"kimg": 0.048}),
                 tmp_path)
    assert all(math.isfinite(v) for k, v in result["scalars"].items() if k.startswith("Loss/"))
    assert {"Loss/GP", "Loss/R1", "Loss/R2"} <= set(result["scalars"])


def test_r1_is_the_same_under_a_loss_scale():
    torch.manual_seed(0)
    D = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    plain = losses.r1_penalty(D(x).flatten(), x)
    scaled = losses.r1_penalty(D(x).flatten(), x, scale=65536.0)
    assert torch.allclose(plain, scaled, rtol=1e-6)


def test_fp16_overflow_skips_the_step_and_lowers_the_scale():
    model = nn.Linear(3, 1)
    net = Net(model, model, torch.optim.Adam(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu"))
    before = [p.clone() for p in model.parameters()]
    scale = net.loss_scale()
    net.backward(model(torch.ones(2, 3)).sum() * float("inf"))
    applied, _ = net.step()
    assert not applied and net.loss_scale() == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    net.backward(model(torch.ones(2, 3)).sum())
    applied, _ = net.step()
    assert applied and not torch.equal(before[0], model.weight)


def test_fp16_trainer_leaves_g_ema_alone_on_g_overflow(digits16, tmp_path):
    cfg = resolve(tiny_config(digits16, engine={"precision": "fp16"}), read_manifest(digits16), 1)
    trainer = Trainer(cfg, tmp_path, SingleEngine("cpu", "fp16"))
    trainer.train_step()
    assert trainer.stats.sums["Skipped/Gmain"] == 0  # a normal fp16 step applies
    ema_before = [p.clone() for p in trainer.G_ema.parameters()]
    g_before = [p.clone() for p in trainer.G.raw.parameters()]
    d_before = [p.clone() for p in trainer.D.raw.parameters()]
    trainer.G.scaler.update(new_scale=3e38)  # the G loss times this overflows fp32: inf gradients
    trainer.D.scaler.update(new_scale=1.0)  # D's own scaler: no overflow at this scale
    trainer.train_step()
    assert trainer.G.loss_scale() < 2e38  # G's scaler backed off ...
    assert trainer.D.loss_scale() == 1.0  # ... and D's, a separate scaler, did not
    assert all(torch.equal(a, b) for a, b in zip(g_before, trainer.G.raw.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(ema_before, trainer.G_ema.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, trainer.D.raw.parameters()))
    assert trainer.stats.sums["Skipped/Gmain"] == 1
    trainer.loader.close()
