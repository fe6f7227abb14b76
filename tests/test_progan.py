"""ProGAN and the progressive schedule: continuity at every transition, equalized learning rate, the
schedule as a pure function of images seen, and resume in the middle of a fade."""

import dataclasses
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_config
from gantrain import config as config_mod
from gantrain.config import ConfigError
from gantrain.models import DataSpec, build
from gantrain.models.layers import EqualizedConv2d, EqualizedLinear
from gantrain.train.loop import run
from gantrain.train.schedule import FADES, Schedule

MODEL = {"name": "progan", "z_dim": 16, "channels": 8, "max_channels": 32, "norm": "none", "minibatch": "stddev"}


def _models(conditional=False):
    torch.manual_seed(0)
    cfg = config_mod.ModelConfig(**{**MODEL, "conditional": conditional})
    return build(cfg, DataSpec(32, 3, 10 if conditional else 0))


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_fade_in_starts_exactly_where_the_previous_stage_ended(resolution):
    G, D = _models()
    z = torch.randn(8, 16)
    x = torch.randn(8, 3, resolution, resolution)
    with torch.no_grad():
        G.set_stage(resolution // 2)
        D.set_stage(resolution // 2)
        previous_g = F.interpolate(G(z), scale_factor=2, mode="nearest")
        previous_d = D(F.avg_pool2d(x, 2))
        G.set_stage(resolution, alpha=0.0)
        D.set_stage(resolution, alpha=0.0)
        assert torch.equal(G(z), previous_g)
        assert torch.equal(D(x), previous_d)


def test_at_alpha_one_the_old_path_has_no_influence():
    G, D = _models()
    z, x = torch.randn(4, 16), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        G.set_stage(16, alpha=1.0)
        D.set_stage(16, alpha=1.0)
        before_g, before_d = G(z), D(x)
        G.to_rgb[1].weight.add_(1.0)  # the 8x8 toRGB and fromRGB are the faded-out paths
        D.from_rgb[1].conv.weight.add_(1.0)
        assert torch.equal(G(z), before_g) and torch.equal(D(x), before_d)
    assert "to_rgb.1" not in G.active_modules() and "from_rgb.1" not in D.active_modules()
    G.set_stage(16, alpha=0.5)
    with torch.no_grad():
        assert not torch.equal(G(z), before_g)  # mid-fade they do count
    assert {"to_rgb.1", "to_rgb.2"} <= set(G.active_modules())


def test_conditional_progan_shapes():
    G, D = _models(conditional=True)
    G.set_stage(8, 0.3)
    D.set_stage(8, 0.3)
    c = torch.arange(4)
    images = G(torch.randn(4, 16), c)
    assert images.shape == (4, 3, 8, 8) and D(images, c).shape == (4,)


def test_equalized_layers_output_variance_and_effective_learning_rate():
    torch.manual_seed(0)
    for fan_in in (16, 1024):  # unit-variance input: output variance = gain^2 whatever the fan-in
        layer = EqualizedLinear(fan_in, 512, gain=math.sqrt(2))
        out = layer(torch.randn(4096, fan_in))
        assert out.var().item() == pytest.approx(2.0, rel=0.1)
    conv = EqualizedConv2d(64, 64, 3, gain=1.0)
    assert conv(torch.randn(64, 64, 8, 8))[:, :, 1:-1, 1:-1].var().item() == pytest.approx(1.0, rel=0.1)
    # One Adam step moves every stored weight by ~lr; the effective weight (times 1/sqrt(fan_in)) then
    # changes by the same fraction of its own scale in a narrow and in a wide layer: the point of it.
    relative = []
    for fan_in in (16, 1024):
        layer = EqualizedLinear(fan_in, 64)
        effective_before = (layer.weight * layer.scale).detach().clone()
        opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
        layer(torch.randn(32, fan_in)).square().mean().backward()
        opt.step()
        change = (layer.weight * layer.scale).detach() - effective_before
        relative.append((change.abs().mean() / effective_before.std()).item())
    assert relative[0] == pytest.approx(relative[1], rel=0.1)
    assert relative[0] == pytest.approx(1e-3, rel=0.2)


def _schedule(**progressive):
    tree = {"data": {"path": "x"}, "model": {"name": "progan"}, "train": {"batch": 16},
            "optim": {"g_lr": 0.001, "d_lr": 0.002},
            "progressive": {"enabled": True, "stabilize_kimg": 1, "fade_kimg": 2, **progressive}}
    return Schedule(config_mod.from_dict(tree), 32)


def test_schedule_boundaries_alpha_and_tables():
    s = _schedule(batch={4: 64, 32: 8}, g_lr={16: 0.003}, fade="cosine")
    assert s.resolutions == [4, 8, 16, 32]
    assert s.boundaries() == [1000, 3000, 4000, 6000, 7000, 9000]
    expect = {0: (4, 1.0, "stabilize"), 999: (4, 1.0, "stabilize"), 1000: (8, 0.0, "fade"),
              2000: (8, 0.5, "fade"), 3000: (8, 1.0, "stabilize"), 4000: (16, 0.0, "fade"),
              7000: (32, 0.0, "fade"), 9000: (32, 1.0, "stabilize"), 10 ** 7: (32, 1.0, "stabilize")}
    for nimg, (res, alpha, phase) in expect.items():
        stage = s.at(nimg)
        assert (stage.resolution, phase) == (res, stage.phase) and stage.alpha == pytest.approx(alpha), nimg
    alphas = [s.at(n).alpha for n in range(4000, 6000, 50)]
    assert alphas == sorted(alphas) and 0 <= alphas[0] < alphas[-1] <= 1
    assert [s.at(n).batch for n in (0, 2000, 4000, 8000)] == [64, 16, 16, 8]
    assert [s.at(n).g_lr for n in (0, 4000)] == [0.001, 0.003] and s.at(4000).d_lr == 0.002
    assert _schedule(enabled=False).at(5000).resolution == 32  # off: one stage at full resolution


@pytest.mark.parametrize("curve", list(FADES))
def test_fade_curves_run_from_zero_to_one_monotonically(curve):
    values = [FADES[curve](i / 100) for i in range(101)]
    assert values[0] == 0 and values[-1] == pytest.approx(1) and values == sorted(values)


def test_schedule_is_a_pure_function_of_images_seen():
    """A fresh process computes the same stages: resume needs only the image counter."""
    points = [0, 1500, 3999, 5321, 8888]
    here = [tuple(vars(_schedule(fade="smoothstep").at(n)).values()) for n in points]
    code = ("import sys; sys.path.insert(0, 'tests'); from test_progan import _schedule; "
            f"print([tuple(vars(_schedule(fade='smoothstep').at(n)).values()) for n in {points}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).parents[1])).stdout
    assert out.strip() == str(here)


def _progressive_config(digits16, kimg, **train):
    return tiny_config(digits16, model=MODEL, data={"workers": 2},
                       progressive={"enabled": True, "stabilize_kimg": 0.064, "fade_kimg": 0.096,
                                    "batch": {4: 32, 8: 16, 16: 16}},
                       loss={"name": "wgan-gp", "gp": {"weight": 10.0}, "drift": {"weight": 0.001}},
                       train={"kimg": kimg, **train},
                       log={"tick_kimg": 0.032, "image_kimg": 0.128, "snapshot_kimg": 0.112})


def test_start_resolution_above_the_model_is_a_config_error(digits16, tmp_path):
    cfg = _progressive_config(digits16, 0.1)
    cfg = cfg.replace(progressive=dataclasses.replace(cfg.progressive, start_resolution=32))
    with pytest.raises(ConfigError, match=r"^progressive.start_resolution: 32 exceeds the model's resolution 16$"):
        run(cfg, tmp_path)
    assert not list(tmp_path.glob("checkpoint-*"))
    cfg = _progressive_config(digits16, 0.1)
    cfg = cfg.replace(progressive=dataclasses.replace(cfg.progressive, batch={4: 32, 8: 6}))
    with pytest.raises(ConfigError, match=r"^model.minibatch_group: 4 does not divide the micro-batch of 6 images"):
        run(cfg, tmp_path)


@pytest.mark.slow
def test_resume_mid_fade_is_bit_exact_across_a_batch_change(digits16, tmp_path):
    """Stop at 112 images (in the 4 -> 8 fade, batch 32 -> 16 happened at 64), resume to 320 (through the
    8x8 stabilization and into the 16x16 fade) == an uninterrupted run: weights, optimizer state, EMA,
    data cursors."""
    full = run(_progressive_config(digits16, 0.32), tmp_path / "full")
    part = run(_progressive_config(digits16, 0.112), tmp_path / "part")
    stage = Schedule(_progressive_config(digits16, 0.112), 16).at(112)
    assert (stage.resolution, stage.phase) == (8, "fade") and 0 < stage.alpha < 1
    assert part["checkpoint"].name == "checkpoint-0000000112.pt"
    resumed = run(_progressive_config(digits16, 0.32), tmp_path / "part", resume="auto")
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(resumed["checkpoint"], weights_only=True)
    assert a["counters"]["nimg"] == b["counters"]["nimg"] == 320
    for net in ("G", "D"):
        for key, value in a[net]["model"].items():
            assert torch.equal(value, b[net]["model"][key]), (net, key)
        for index, moments in a[net]["optimizer"]["state"].items():
            for key, value in moments.items():
                assert torch.equal(value, b[net]["optimizer"]["state"][index][key]), (net, index, key)
    for key, value in a["G_ema"].items():
        assert torch.equal(value, b["G_ema"][key]), key
    assert a["data"] == b["data"]
    assert resumed["scalars"]["Progress/resolution"] == 16
    # Grids are drawn at the stage's resolution and upsampled for display (8x8 samples at 128 images).
    assert Image.open(tmp_path / "full" / "fakes-0000000128.png").size == (8 * 16, 8 * 16)
    acc = EventAccumulator(str(tmp_path / "full" / "tb"))
    acc.Reload()
    assert {e.value for e in acc.Scalars("Progress/resolution")} == {4.0, 8.0, 16.0}
    assert 0 < min(e.value for e in acc.Scalars("Progress/alpha")) < 1
