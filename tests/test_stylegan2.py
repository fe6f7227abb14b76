"""StyleGAN2 networks: the reference's parameter counts, modulation/demodulation, FIR resampling, noise,
truncation, style mixing and the discriminator's conditioning, on real computations at tiny sizes."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gantrain.models.base import DataSpec
from gantrain.models.layers import DOutput
from gantrain.models.resample import downsample2d, fir_filter, upsample2d
from gantrain.models.stylegan2 import (StyleGAN2Discriminator, StyleGAN2Generator, SynthesisLayer,
                                       conv2d_resample, modulated_conv2d)

# Counted by instantiating NVlabs stylegan2-ada-pytorch's networks (3 channels, z_dim = w_dim = 512,
# channel_max 512): the preset file with those settings, its resolution and classes -> (G, D).
# The reference's D mapping network (cifar's label embedding) keeps its default 8 layers, as ours does.
REFERENCE = {
    "paper256": ("stylegan2-paper256.yaml", 256, 0, (24_767_458, 24_001_089)),
    "stylegan2": ("stylegan2-1024.yaml", 1024, 0, (30_370_060, 29_012_513)),
    "cifar": ("stylegan2-cifar.yaml", 32, 10, (20_215_315, 23_089_664)),
}
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", REFERENCE)
def test_parameter_counts_equal_the_reference_networks(preset):
    """The preset files build the reference's networks, parameter for parameter."""
    from gantrain import config as config_mod
    from gantrain import models

    name, resolution, classes, (g_count, d_count) = REFERENCE[preset]
    cfg = config_mod.load(CONFIGS / name)
    with torch.device("meta"):  # shapes only: config-f's 59 M parameters need no memory
        G, D = models.build(cfg.model, DataSpec(resolution, 3, classes))
    assert (_count(G), _count(D)) == (g_count, d_count)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2  # two convolutions per resolution above 4, + toRGB


def test_fir_resampling_equals_direct_convolutions_with_the_outer_product_filter():
    torch.manual_seed(0)
    f = fir_filter()
    assert torch.allclose(f, torch.tensor([1., 3, 3, 1]).outer(torch.tensor([1., 3, 3, 1])) / 64)
    x = torch.randn(2, 3, 8, 8)
    kernel = f[None, None].repeat(3, 1, 1, 1)
    # upsampling = a transposed convolution with the filter x 4 (stride 2), one pixel cropped per side
    up = F.conv_transpose2d(x, kernel * 4, stride=2, groups=3)[:, :, 1:-1, 1:-1]
    assert torch.allclose(upsample2d(x, f), up, atol=1e-6)
    assert torch.equal(downsample2d(x, f), F.conv2d(x, kernel, stride=2, padding=1, groups=3))
    one = torch.ones(1, 1, 8, 8)  # a constant stays constant away from the zero-padded borders
    assert torch.allclose(upsample2d(one, f)[..., 2:-2, 2:-2], torch.ones(1))
    assert torch.allclose(downsample2d(one, f)[..., 1:-1, 1:-1], torch.ones(1))
    # the fused forms (transposed conv then filter; filter then strided conv) equal filtering and convolving
    # one after the other, away from the borders (the transposed form convolves with the flipped kernel)
    w = torch.randn(5, 3, 3, 3)
    fused = conv2d_resample(x, w, f, up=2, padding=1)  # fp32 sums of <= 108 O(1) products: rounding ~1e-6
    slow = F.conv2d(upsample2d(x, f), w.flip([2, 3]), padding=1)
    assert torch.allclose(fused[..., 2:-2, 2:-2], slow[..., 2:-2, 2:-2], atol=1e-5)
    fused = conv2d_resample(x, w, f, down=2, padding=1)
    assert torch.allclose(fused[..., 1:-1, 1:-1], downsample2d(F.conv2d(x, w, padding=1), f)[..., 1:-1, 1:-1],
                          atol=1e-5)


def test_demodulated_kernels_have_unit_norm_and_a_layer_keeps_unit_scale_at_init():
    torch.manual_seed(0)
    n, cin, cout = 4, 16, 32
    weight, styles = torch.randn(cout, cin, 3, 3), torch.randn(n, cin).abs() + 0.5
    # a 3x3 input with one hot pixel at the centre reads each demodulated kernel tap by tap
    for i in range(cin):
        x = torch.zeros(n, cin, 3, 3)
        x[:, i, 1, 1] = 1
        taps = modulated_conv2d(x, weight, styles, padding=1)  # [n, cout, 3, 3]: kernel i, flipped
        if i == 0:
            energy = taps.square().sum([2, 3])
        else:
            energy += taps.square().sum([2, 3])
    assert torch.allclose(energy, torch.ones(n, cout), atol=1e-5)  # sum over inputs and taps: unit L2 norm
    # the training path (modulate activations, shared kernel, demodulate outputs) is the same function as the
    # grouped one, upsampling included: fp32 sums of 144 O(1) products in another order, ~1e-6
    x, f = torch.randn(n, cin, 8, 8), fir_filter()
    for up, demodulate in ((1, True), (2, True), (1, False)):
        grouped = modulated_conv2d(x, weight, styles, f, up=up, padding=1, demodulate=demodulate)
        batched = modulated_conv2d(x, weight, styles, f, up=up, padding=1, demodulate=demodulate, fused=False)
        assert torch.allclose(grouped, batched, atol=1e-5), (up, demodulate)
    # unit-variance input, random w: pre-activations are N(0, 1) per pixel, so after LeakyReLU(0.2) x sqrt(2)
    # the second moment is 2 * (1 + 0.2^2) / 2 = 1.04 (noise strength and bias start at 0). Interior pixels
    # only (zero padding shrinks the border's); 8 x 64 x 30 x 30 samples: sampling error ~0.01, tolerance 0.06.
    layer = SynthesisLayer(64, 64, w_dim=32, resolution=32)
    out = layer(torch.randn(8, 64, 32, 32), torch.randn(8, 32))
    assert out[..., 1:-1, 1:-1].square().mean().item() == pytest.approx(1.04, abs=0.06)


def _tiny(classes=0, **kwargs):
    torch.manual_seed(0)
    spec = DataSpec(16, 3, classes)
    return StyleGAN2Generator(spec, z_dim=8, w_dim=8, mapping_layers=2, channel_base=128, channel_max=16,
                              **kwargs), StyleGAN2Discriminator(spec, channel_base=128, channel_max=16,
                                                                mbstd_group=2)


def test_noise_modes_truncation_and_cutoff():
    G, _ = _tiny()
    G.eval()
    z = torch.randn(4, 8)
    ws = G.mapping(z)
    assert ws.shape == (4, G.num_ws, 8) and G.num_ws == 6
    assert torch.equal(G.synthesis(ws, "const"), G.synthesis(ws, "const"))
    assert torch.equal(G.synthesis(ws, "none"), G.synthesis(ws, "none"))
    assert torch.equal(G.synthesis(ws, "random"), G.synthesis(ws, "random"))  # all strengths start at 0
    for block in G.synthesis_net.blocks.values():
        for layer in (getattr(block, "conv0", None), block.conv1):
            if layer is not None:
                layer.noise_strength.data.fill_(0.5)
    assert not torch.equal(G.synthesis(ws, "random"), G.synthesis(ws, "random"))
    assert torch.equal(G.synthesis(ws, "const"), G.synthesis(ws, "const"))
    assert not torch.equal(G.synthesis(ws, "const"), G.synthesis(ws, "none"))
    G.mapping_net.w_avg.copy_(torch.randn(8))
    assert torch.equal(G.mapping(z, psi=0), G.w_avg.expand(4, G.num_ws, 8))  # psi 0: w_avg for every sample
    cut = G.mapping(z, psi=0.5, cutoff=2)
    assert torch.allclose(cut[:, :2], G.w_avg.lerp(ws[:, :2], 0.5)) and torch.equal(cut[:, 2:], ws[:, 2:])
    images = G.synthesis(ws, "const")
    assert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()


def test_tanh_output_bounds_the_image_and_is_the_only_change():
    """model.output=tanh: the same network and parameters (a checkpoint of either loads into the other), the
    image tanh of the reference's linear toRGB sum, so every sample lies in the data's [-1, 1]; the path-length
    gradient still reaches w through it."""
    G, _ = _tiny()
    T, _ = _tiny(output="tanh")
    T.load_state_dict(G.state_dict())
    G.eval(), T.eval()
    ws = G.mapping(torch.randn(16, 8) * 3)
    linear, bounded = G.synthesis(ws, "const"), T.synthesis(ws, "const")
    assert linear.abs().max() > 1  # the reference's image is unbounded at init
    assert torch.equal(bounded, torch.tanh(linear)) and bounded.abs().max() < 1
    ws.requires_grad_(True)
    grad, = torch.autograd.grad(T.synthesis(ws, "const").sum(), ws)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="model.output"):
        _tiny(output="sigmoid")


def test_w_avg_tracks_the_mean_w_while_training():
    G, _ = _tiny(style_mixing=0)
    G.train()
    z = torch.randn(16, 8)
    before = G.w_avg.clone()
    G(z)
    w = G.mapping_net.layers[1](G.mapping_net.layers[0](z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()))
    assert torch.allclose(G.w_avg, w.mean(0).lerp(before, 0.995), atol=1e-6)
    G.eval()
    G(z)
    assert torch.allclose(G.w_avg, w.mean(0).lerp(before, 0.995), atol=1e-6)  # frozen in eval mode


def test_style_mixing_switches_to_the_second_latent_at_the_crossover_layer():
    G, _ = _tiny(style_mixing=1.0, noise_mode="const")
    G.train()
    z = torch.randn(4, 8)
    seen: list[torch.Tensor] = []  # the w each modulated layer (and toRGB) receives, in call order
    hooks = [m.affine.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
             for m in G.synthesis_net.modules() if hasattr(m, "affine")]
    state = torch.get_rng_state()
    G(z)
    torch.set_rng_state(state)
    cutoff = int(torch.randint(1, G.num_ws, ()))
    torch.rand(())
    w1 = G.mapping(z, update_w_avg=False)[:, 0]
    w2 = G.mapping(torch.randn_like(z), update_w_avg=False)[:, 0]
    for h in hooks:
        h.remove()
    # call order: conv1@4, toRGB@4, then per block conv0, conv1, toRGB; ws index of each call:
    index = [0, 1, 1, 2, 3, 3, 4, 5]
    for i, w in zip(index, seen):
        assert torch.allclose(w, w1 if i < cutoff else w2), (i, cutoff)
    assert 1 <= cutoff < G.num_ws


def test_only_the_top_resolutions_compute_in_the_engines_reduced_precision():
    """num_fp16_res 2 at 64x64: under bf16 autocast G's 32 and 64 blocks and D's 64 and 32 blocks compute in
    bf16; the mapping network, the lower blocks, D's epilogue and the image sum stay fp32; gradients reach
    every parameter. Without autocast (engine.precision fp32) everything is fp32."""
    spec = DataSpec(64, 3, 2)
    torch.manual_seed(0)
    G = StyleGAN2Generator(spec, 16, 16, 2, 256, 32, conv_clamp=256, num_fp16_res=2)
    D = StyleGAN2Discriminator(spec, 256, 32, mbstd_group=2, conv_clamp=256, num_fp16_res=2)
    seen = {}
    for prefix, net in (("G.", G), ("D.", D)):
        for name, module in net.named_modules():
            if name.endswith("conv1") or name in ("mapping_net", "conv", "out"):
                module.register_forward_hook(lambda m, i, o, key=prefix + name: seen.__setitem__(key, o.dtype))
    z, c = torch.randn(4, 16), torch.tensor([0, 1, 0, 1])
    with torch.autocast("cpu", torch.bfloat16):
        img = G(z, c)
        logits = D(img, c)
    bf16 = {k for k, v in seen.items() if v == torch.bfloat16}
    assert bf16 == {"G.synthesis_net.blocks.32.conv1", "G.synthesis_net.blocks.64.conv1", "D.blocks.0.conv1",
                    "D.blocks.1.conv1"}, bf16
    assert img.dtype == logits.dtype == torch.float32
    (logits.sum() + img.square().mean()).backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    seen.clear()
    D(G(z, c), c)
    assert set(seen.values()) == {torch.float32}


def test_discriminator_scores_features_and_projection_conditioning():
    _, D = _tiny()
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    out = D(x, features=True)
    assert isinstance(out, DOutput) and out.logits.shape == (4,) and out.features.shape == (4, 16)
    out.logits.sum().backward()
    assert x.grad.abs().sum() > 0
    _, D = _tiny(classes=5)
    assert D.cmap_dim == 16
    x = torch.randn(4, 3, 16, 16)
    a, b = D(x, torch.tensor([0, 1, 2, 3])), D(x, torch.tensor([4, 4, 4, 4]))
    assert a.shape == (4,) and not torch.allclose(a, b)  # the label enters through the projection
    G, _ = _tiny(classes=5)
    assert G(torch.randn(4, 8), torch.tensor([0, 1, 2, 3])).shape == (4, 3, 16, 16)


# ---- path length and R1 gamma ---------------------------------------------------------------------------
def test_path_lengths_of_a_linear_generator_equal_the_hand_computed_jacobian_products():
    """For img = sum_l A_l w_l the Jacobian of layer l is A_l, so ||J_w^T y|| = sqrt(mean_l ||A_l^T y||^2)."""
    from gantrain import losses

    torch.manual_seed(0)
    n, layers, w_dim, shape = 3, 4, 5, (2, 3, 3)
    A = torch.randn(layers, w_dim, math.prod(shape), dtype=torch.float64, requires_grad=True)
    ws = torch.randn(n, layers, w_dim, dtype=torch.float64, requires_grad=True)
    img = torch.einsum("nlw,lwp->np", ws, A).view(n, *shape)
    y = torch.randn(n, *shape, dtype=torch.float64) / 3
    lengths = losses.path_lengths(img, ws, y)
    by_hand = [math.sqrt(sum(float((A[k].detach() @ y[i].flatten()).square().sum()) for k in range(layers))
                         / layers) for i in range(n)]
    assert torch.allclose(lengths.double(), torch.tensor(by_hand, dtype=torch.float64), rtol=1e-6)  # fp32 cast
    mean = torch.tensor(1.5)
    assert torch.equal(losses.path_length_penalty(lengths, mean), (lengths - 1.5).square())
    lengths.sum().backward()  # differentiable: the penalty trains G's weights through the double backward
    assert torch.isfinite(A.grad).all() and A.grad.abs().sum() > 0


def test_pl_mean_after_two_phases_by_hand_and_r1_auto_gamma(digits16, tmp_path, monkeypatch):
    """Two path-length phases: pl_mean = lerp(lerp(0, m1, decay), m2, decay) with m_k the phase's mean
    length, checkpointed; R1 `auto` resolves to 0.0002 * res^2 / batch; misuse is one line naming the key."""
    from conftest import tiny_config
    from gantrain import losses
    from gantrain.config import ConfigError
    from gantrain.train import checkpoint
    from gantrain.train.loop import resolve, run

    seen = []
    real_path_lengths = losses.path_lengths

    def recording(*args, **kwargs):
        lengths = real_path_lengths(*args, **kwargs)
        seen.append(lengths.detach().clone())
        return lengths

    monkeypatch.setattr(losses, "path_lengths", recording)
    sections = dict(model=STYLEGAN2_TINY, loss={"r1": {"weight": "auto"}, "pl": {"weight": 2.0, "interval": 1}},
                    train={"kimg": 0.032}, log={"snapshot_kimg": 0.032})
    cfg = tiny_config(digits16, **sections)
    run(cfg, tmp_path / "r")
    assert [len(x) for x in seen] == [8, 8]  # batch 16, batch_shrink 2
    expected = torch.zeros(()).lerp_(seen[0].mean(), 0.01).lerp_(seen[1].mean(), 0.01)
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "r")[-1])
    assert torch.equal(state["pl_mean"], expected) and expected > 0
    assert state["config"]["loss"]["r1"]["weight"] == pytest.approx(0.0002 * 16 ** 2 / 16)

    from gantrain.data.stream import read_manifest
    with pytest.raises(ConfigError, match=r"^loss\.r1\.weight: expected float or 'auto', got 'autox'"):
        tiny_config(digits16, loss={"r1": {"weight": "autox"}})
    with pytest.raises(ConfigError, match=r"^loss\.pl\.batch_shrink: 3 does not divide the micro-batch of 16"):
        resolve(tiny_config(digits16, model=STYLEGAN2_TINY, loss={"pl": {"weight": 2.0, "batch_shrink": 3}}),
                read_manifest(digits16), 1)
    with pytest.raises(ConfigError, match=r"^loss\.pl\.weight: path-length regularization needs a style-based"):
        run(tiny_config(digits16, loss={"pl": {"weight": 2.0}}), tmp_path / "dcgan")


# ---- through the training loop ------------------------------------------------------------------------
STYLEGAN2_TINY = {"name": "stylegan2", "z_dim": 8, "w_dim": 8, "mapping_layers": 2, "channel_base": 64,
                  "max_channels": 8, "minibatch_group": 2}


def test_cpu_preset_trains_through_the_cli_resumes_exactly_and_samples(digits16, tmp_path, capsys):
    """configs/stylegan2-cpu.yaml through `gantrain train`, narrowed to a few milliseconds per step (the
    recipe as in the file: lazy R1 with the auto gamma, path length, style mixing, EMA): TensorBoard has the
    penalties and the grids; a run stopped halfway and resumed equals the straight run bit for bit (w_avg
    and pl_mean included); then the sampling tools on its checkpoint."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gantrain.cli import main as cli_main
    from gantrain.train import checkpoint

    narrow = [f"data.path={digits16}", "data.workers=0", "model.channel_base=64", "model.max_channels=8",
              "model.z_dim=8", "model.w_dim=8", "model.minibatch_group=2", "train.batch=16", "loss.r1.interval=4",
              "loss.pl.interval=2", "eval.metrics=none", "log.tick_kimg=0.032", "log.image_kimg=0.064",
              "log.snapshot_kimg=0.064", "log.progress=false"]

    def train(run_dir: str, kimg: float, *extra: str) -> None:
        assert cli_main(["train", str(CONFIGS / "stylegan2-cpu.yaml"), "--run-dir", str(tmp_path / run_dir),
                         *extra, *narrow, f"train.kimg={kimg}"]) == 0

    train("a", 0.128)
    train("b", 0.064)
    train("b", 0.128, "--resume", "auto")
    a, b = (checkpoint.load(checkpoint.list_checkpoints(tmp_path / d)[-1]) for d in ("a", "b"))
    assert a["counters"]["nimg"] == b["counters"]["nimg"] == 128
    assert a["G_ema"].keys() == b["G_ema"].keys() and "mapping_net.w_avg" in a["G_ema"]
    for net, state in (("G_ema", a["G_ema"]), ("G", a["G"]["model"]), ("D", a["D"]["model"])):
        other = b[net] if net == "G_ema" else b[net]["model"]
        for key in state:
            assert torch.equal(state[key], other[key]), f"{net}.{key}"
    assert not torch.equal(a["G_ema"]["mapping_net.w_avg"], torch.zeros(8))  # tracked while training
    assert torch.equal(a["pl_mean"], b["pl_mean"]) and a["pl_mean"] > 0  # path length's running mean
    assert a["config"]["loss"]["r1"]["weight"] == pytest.approx(0.0002 * 16 ** 2 / 16)  # auto at 16x16, batch 16

    acc = EventAccumulator(str(tmp_path / "a" / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"Loss/R1", "Loss/PL", "PL/mean", "PL/length", "GradNorm/Gpl", "GradNorm/Dr1"} <= scalars
    assert [e.step for e in acc.Images("fakes")] == [0, 64, 128]

    ckpt = str(checkpoint.list_checkpoints(tmp_path / "a")[-1])
    assert cli_main(["sample", ckpt, "--out", str(tmp_path / "s.png"), "--n", "4", "--truncation", "0.5"]) == 0
    assert cli_main(["truncation", ckpt, "--out", str(tmp_path / "t.png"), "--rows", "2", "--cutoff", "2"]) == 0
    capsys.readouterr()
    _sampling_tools(ckpt, tmp_path, capsys)


def _png(path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(path))).long()


def _sampling_tools(ckpt: str, tmp_path, capsys) -> None:
    """`sample --seeds` (a seed's image does not depend on the other seeds or their order), `style-mix` (its
    header row and column are the seeds' own images; all layers from the column seed give the column's
    image) and their one-line errors."""
    from gantrain.cli import main as cli_main

    assert cli_main(["sample", ckpt, "--seeds", "3-5", "--out", str(tmp_path / "seeds")]) == 0
    assert cli_main(["sample", ckpt, "--seeds", "9,5", "--out", str(tmp_path / "again")]) == 0
    assert sorted(p.name for p in (tmp_path / "seeds").iterdir()) == ["seed0003.png", "seed0004.png", "seed0005.png"]
    five, five_again = _png(tmp_path / "seeds" / "seed0005.png"), _png(tmp_path / "again" / "seed0005.png")
    assert five.shape == (16, 16) and torch.equal(five, five_again)
    assert not torch.equal(five, _png(tmp_path / "seeds" / "seed0004.png"))
    # batched and single convolutions may round differently in the last bit: at most 1 of 255 after uint8
    assert cli_main(["style-mix", ckpt, "--rows", "3,4", "--cols", "5", "--styles", "0-5",
                     "--out", str(tmp_path / "mix.png")]) == 0
    grid = _png(tmp_path / "mix.png")
    assert grid.shape == (48, 32) and (grid[:16, :16] == 255).all()
    cell = lambda r, c: grid[16 * r:16 * r + 16, 16 * c:16 * c + 16]  # noqa: E731
    assert (cell(0, 1) - five).abs().max() <= 1 and (cell(1, 1) - five).abs().max() <= 1  # every layer from 5
    assert (cell(1, 0) - _png(tmp_path / "seeds" / "seed0003.png")).abs().max() <= 1
    assert cli_main(["style-mix", ckpt, "--rows", "3", "--cols", "4", "--styles", "0-1",
                     "--out", str(tmp_path / "coarse.png")]) == 0
    coarse = _png(tmp_path / "coarse.png")[16:, 16:]
    assert not torch.equal(coarse, _png(tmp_path / "seeds" / "seed0003.png"))
    assert cli_main(["style-mix", ckpt, "--rows", "3", "--cols", "4", "--styles", "6",
                     "--out", str(tmp_path / "x.png")]) == 2
    assert cli_main(["sample", ckpt, "--seeds", "a-b", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["gantrain: error: --styles: 6 is not a layer of this G (0..5)",
                   "gantrain: error: --seeds: expected integers and ranges like 0-63,100, got 'a-b'"]


@pytest.mark.distributed
@pytest.mark.slow
def test_stylegan2_with_r1_and_path_length_under_ddp_and_zero2_matches_one_process(digits16, tmp_path):
    """Lazy R1 (every 2 D steps) and path length (every 2 G steps, double backward through the wrapped G)
    over 2 ranks x 8 under DDP and under DeepSpeed ZeRO-2 == one process x 16: weights, Adam moments and
    the penalty's running mean pl_mean (averaged over ranks). Ranks hold identical weights (the worker
    checks), and the models' own randomness comes from a per-rank stream. For the comparison the noise
    inputs are const and style mixing is off: random ones are drawn per rank, so a sample's noise depends
    on the rank that draws it (as in the reference). w_avg is left out: it is rank 0's running mean of its
    own ws (DDP broadcasts rank 0's buffers; the reference saves rank 0's too), and it only enters sampling."""
    from equivalence import GRAD_ATOL, GRAD_RTOL, tolerance
    from test_distributed import _assert_close, _states

    extra = [*(f"model.{k}={v}" for k, v in STYLEGAN2_TINY.items()), "model.style_mixing=0",
             "loss.pl.weight=2", "loss.pl.interval=2", "test.const_noise=1"]
    one = _states(digits16, tmp_path / "one", 1, "single", 16, extra=extra)
    ddp = _states(digits16, tmp_path / "ddp", 2, "ddp", 8, extra=[*extra, "test.distinct_model_rng=1"])
    zero2 = _states(digits16, tmp_path / "zero2", 2, "deepspeed", 8, extra=[*extra, "engine.zero_stage=2"])
    assert "synthesis_net.blocks.16.conv1.noise_strength" in one["G"]
    n_w = 6 * 8  # num_ws x w_dim of the tiny G: the length is the norm of a gradient over n_w values
    for state in (ddp, zero2):
        assert state["pl_mean"] > 0
        k = 8 * 16 * 16 / 100  # the gradient bounds for sums of that length, as _assert_close scales them
        bound = k * (GRAD_ATOL * math.sqrt(n_w) + GRAD_RTOL * float(one["pl_mean"]) + tolerance(state["steps"])[0])
        assert abs(float(state["pl_mean"]) - float(one["pl_mean"])) <= bound
        for net in ("G", "G_ema"):
            w_avg = state[net].pop("mapping_net.w_avg")
            assert torch.isfinite(w_avg).all() and w_avg.abs().sum() > 0
            one[net].pop("mapping_net.w_avg", None)
        # a conv weight's gradient at 16x16 sums micro-batch x pixels = 8 x 256 terms per rank (one process:
        # 16 x 256, in another order), through R1's and path length's double backward too
        _assert_close(state, one, terms=8 * 16 * 16)
