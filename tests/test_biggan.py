"""BigGAN: the reference's networks (parameter counts), each part against a hand computation, and a CLI run."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gantrain import config as config_mod
from gantrain import models
from gantrain.models.biggan import ARCH, BigGANDiscriminator, BigGANGenerator, ConditionalBatchNorm, SelfAttention
from gantrain.models.layers import initialize, spectral_norm_all

TINY = dict(z_dim=24, ch=4, shared_dim=8, attention=(16,))


def _preset_model(name: str) -> config_mod.ModelConfig:
    return config_mod.load(f"configs/{name}.yaml", ["data.path=x"]).model


def test_imagenet128_preset_has_the_reference_parameter_counts():
    """BigGAN-PyTorch at 128x128, ch 96, 1000 classes, hierarchical z 120, shared 128, attention at 64:
    G 70,433,988 and D 87,982,370 (the paper's 70.4M / 88.0M). Built on the meta device, without the
    preset's spectral norm (which keeps the count: u and v are buffers, asserted on a small network below;
    on the meta device it costs half a minute)."""
    cfg = _preset_model("biggan-imagenet128")
    assert cfg.spectral_norm == "both" and cfg.channels == 96 and cfg.z_dim == 120 and cfg.attention == [64]
    cfg = dataclasses.replace(cfg, spectral_norm="none")
    with torch.device("meta"):
        G, D = models.build(cfg, models.DataSpec(128, 3, 1000))
    assert sum(p.numel() for p in G.parameters()) == 70_433_988
    assert sum(p.numel() for p in D.parameters()) == 87_982_370


def test_cifar_preset_has_the_reference_parameter_counts():
    """BigGAN-PyTorch's CIFAR networks (ch 64, z 128 unsplit, no shared embedding, no attention) have G
    4,304,387 and D 4,207,361 parameters, counted from the reference's layer list: G = linear 128 -> 4096
    (528,384) + 3 blocks of two 3x3 convs 256 -> 256 (590,080 each), a 1x1 skip (65,792) and four class
    embeddings 10 x 256 (10,240) + output BN affine (512) + conv 256 -> 3 (6,915); D = 4 blocks (598,272,
    1,245,952, 1,180,160, 1,180,160) + linear (257) + class embedding (2,560)."""
    cfg = _preset_model("biggan-cifar")
    assert (cfg.channels, cfg.z_dim, cfg.shared_dim, cfg.hier, cfg.attention) == (64, 128, 0, False, [])
    G, D = models.build(cfg, models.DataSpec(32, 3, 10))
    assert sum(p.numel() for p in G.parameters()) == 4_304_387
    assert sum(p.numel() for p in D.parameters()) == 4_207_361
    assert not hasattr(G.blocks[0].bn1.gain, "parametrizations")  # G's embeddings: never normalized
    assert hasattr(G.blocks[0].conv1, "parametrizations") and hasattr(D.embed, "parametrizations")


def test_per_layer_class_embeddings_condition_each_batch_norm():
    torch.manual_seed(0)
    bn = ConditionalBatchNorm(3, 0, eps=1e-5, classes=4)
    torch.nn.init.normal_(bn.gain.weight)
    torch.nn.init.normal_(bn.bias.weight)
    x, c = torch.randn(4, 3, 2, 2), torch.tensor([0, 3, 3, 1])
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-5) * (1 + bn.gain.weight[c])[:, :, None, None] \
        + bn.bias.weight[c][:, :, None, None]
    assert torch.allclose(bn(x, c), want, atol=1e-5)
    G = BigGANGenerator(models.DataSpec(32, 3, 10), z_dim=16, ch=4, shared_dim=0, hier=False, attention=()).eval()
    z = torch.randn(2, 16)
    assert not torch.equal(G(z, torch.tensor([0, 0])), G(z, torch.tensor([5, 5])))
    with pytest.raises(ValueError, match="model.hier: .* needs model.hier false"):
        BigGANGenerator(models.DataSpec(32, 3, 10), z_dim=16, shared_dim=0, hier=True)


@pytest.mark.parametrize("resolution", [32, 64, 128, 256, 512])
def test_every_resolution_builds_and_maps_shapes(resolution):
    spec = models.DataSpec(resolution, 3, 5)
    slots = len(ARCH[resolution][0]) + 1
    G, D = BigGANGenerator(spec, z_dim=slots * 3, ch=8, shared_dim=4), BigGANDiscriminator(spec, ch=8)
    z, c = torch.randn(2, G.z_dim), torch.tensor([0, 4])
    x = G(z, c)
    assert x.shape == (2, 3, resolution, resolution) and x.abs().max() <= 1
    out = D(x, c, features=True)
    assert out.logits.shape == (2,) and out.features.shape[0] == 2


def test_a_z_that_does_not_split_is_a_one_line_error():
    with pytest.raises(ValueError, match="model.z_dim: 100 does not split into 6 equal chunks"):
        BigGANGenerator(models.DataSpec(128, 3, 10), z_dim=100)


def test_conditional_batch_norm_against_its_hand_computation():
    torch.manual_seed(0)
    bn = ConditionalBatchNorm(3, 5, eps=1e-5)
    x, y = torch.randn(4, 3, 2, 2), torch.randn(4, 5)
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-5) * (1 + y @ bn.gain.weight.t())[:, :, None, None] \
        + (y @ bn.bias.weight.t())[:, :, None, None]
    assert torch.allclose(bn(x, y), want, atol=1e-5)


def test_class_conditioning_and_each_latent_chunk_reach_their_blocks():
    """Another class changes the output. Perturbing block k's chunk leaves everything before block k
    unchanged (G in eval mode: batch norm from running statistics, so samples do not mix)."""
    torch.manual_seed(0)
    G = BigGANGenerator(models.DataSpec(32, 3, 10), **TINY).eval()
    z = torch.randn(2, 24)
    assert not torch.allclose(G(z, torch.tensor([1, 2])), G(z, torch.tensor([3, 4])))
    seen = {}
    for i, block in enumerate(G.blocks):
        block.register_forward_hook(lambda _m, _i, out, i=i: seen.__setitem__(i, out.detach().clone()))
    c = torch.tensor([1, 2])
    G(z, c)
    before = dict(seen)
    chunk = 24 // 4
    for k in range(3):
        z2 = z.clone()
        z2[:, chunk * (k + 1):chunk * (k + 2)] += 1  # block k's chunk (chunk 0 feeds the input layer)
        G(z2, c)
        for i in range(3):
            assert torch.equal(seen[i], before[i]) == (i < k), (k, i)


def test_self_attention_starts_as_the_identity_and_matches_a_hand_computation():
    torch.manual_seed(0)
    att = SelfAttention(16)
    x = torch.randn(2, 16, 2, 2)
    assert torch.equal(att(x), x)  # gamma 0
    with torch.no_grad():
        att.gamma.fill_(0.5)
    theta = F.conv2d(x, att.theta.weight).flatten(2)  # [2, 2, 4]
    phi = F.conv2d(x, att.phi.weight).amax(dim=(2, 3)).unsqueeze(2)  # 2x2 max-pooled: one key, [2, 2, 1]
    g = F.conv2d(x, att.g.weight).amax(dim=(2, 3)).unsqueeze(2)  # one value, [2, 8, 1]
    beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # one key: all ones
    assert torch.equal(beta, torch.ones_like(beta))
    o = F.conv2d((g @ beta.transpose(1, 2)).view(2, 8, 2, 2), att.o.weight)
    assert torch.allclose(att(x), x + 0.5 * o, atol=1e-6)


def test_projection_and_sum_pooling_against_their_hand_computation():
    torch.manual_seed(0)
    D = BigGANDiscriminator(models.DataSpec(32, 3, 10), ch=2, attention=())
    x, c = torch.randn(3, 3, 32, 32), torch.tensor([0, 5, 9])
    h = x
    for block in D.blocks:
        h = block(h)
    pooled = F.relu(h).sum(dim=(2, 3))
    want = pooled @ D.linear.weight.t() + D.linear.bias + (D.embed.weight[c] * pooled).sum(1, keepdim=True)
    out = D(x, c, features=True)
    assert torch.allclose(out.logits, want.squeeze(1), atol=1e-5) and torch.allclose(out.features, pooled)


def test_orthogonal_init_and_spectral_norm():
    """ortho: W W^T = I for every weight with rows <= cols (viewed as [out, fan_in]). Spectral norm: after
    the power iterations converge (200 of them on fixed weights), the top singular value of every
    normalized weight is 1 to 1e-3; torch's estimate and the SVD then agree to float32 rounding of the
    iteration, well inside that. The shared embedding is left unnormalized, as in the reference."""
    torch.manual_seed(0)
    G = initialize(BigGANGenerator(models.DataSpec(32, 3, 10), **TINY), "ortho")
    for m in G.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding)):
            w = m.weight.flatten(1)
            if w.shape[0] <= w.shape[1]:
                assert torch.allclose(w @ w.t(), torch.eye(w.shape[0]), atol=1e-5)
    count = sum(p.numel() for p in G.parameters())
    spectral_norm_all(G, eps=1e-6)
    assert sum(p.numel() for p in G.parameters()) == count
    assert not hasattr(G.shared, "parametrizations") and hasattr(G.linear, "parametrizations")
    normalized = [m for m in G.modules() if hasattr(m, "parametrizations")]
    with torch.no_grad():
        for _ in range(200):  # each access of a weight in training mode runs one power iteration
            for m in normalized:
                m.weight
    for m in normalized:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert math.isclose(float(sigma), 1.0, abs_tol=1e-3)


def test_the_cpu_preset_trains_through_the_cli_and_writes_grids_and_scalars(tmp_path):
    """configs/biggan-cpu.yaml for 2 steps, at half its width (ch 8), on the 8x8 digits packed at 32x32 (the
    preset's own data is MNIST-5k at 32x32): class-conditional, SN, ortho init and penalty, 2 D steps."""
    from gantrain.cli import main as cli_main
    from gantrain.data.pack import pack
    from gantrain.data.sources import open_source

    data = tmp_path / "digits32"
    pack(open_source("digits"), data, 32, shard_size=600, progress=False)
    run_dir = tmp_path / "run"
    assert cli_main(["train", "configs/biggan-cpu.yaml", f"data.path={data}", "data.workers=1", "train.kimg=0.064",
                     "train.batch=32", "model.channels=8", "log.tick_kimg=0.032", "log.image_kimg=0.064",
                     "log.snapshot_kimg=0.064",
                     "eval.metrics=[]", "log.progress=false", "--run-dir", str(run_dir)]) == 0
    assert sorted(p.name for p in run_dir.glob("fakes-*.png"))
    stats = (run_dir / "stats.jsonl").read_text()
    assert '"Loss/ortho"' in stats and '"Loss/D"' in stats
    assert list((run_dir / "tb").glob("events.*"))
    # Sampling with standing statistics: a different grid from the running statistics' (G_ema's weights
    # with G's statistics), the same on a second call (seeded).
    ckpt = str(sorted(run_dir.glob("checkpoint-*.pt"))[-1])
    grids = []
    for i, extra in enumerate([[], ["--standing-stats", "2", "--standing-batch", "16"]] * 2):
        out = tmp_path / f"grid{i}.png"
        assert cli_main(["sample", ckpt, "--out", str(out), "--n", "10", *extra]) == 0
        grids.append(out.read_bytes())
    assert grids[0] != grids[1] and grids[0] == grids[2] and grids[1] == grids[3]


def test_standing_statistics_change_batch_norm_running_stats_and_nothing_else():
    """Every batch norm's running mean / variance become the average of its per-batch statistics over the
    standing passes (hooked inputs, recomputed here); parameters, the other buffers, the layers' momentum and
    the eval mode are unchanged."""
    import copy

    from gantrain.sampling import standing_stats

    torch.manual_seed(0)
    G = BigGANGenerator(models.DataSpec(32, 3, 10), **TINY)
    for _ in range(2):  # running statistics of training forwards, to be replaced
        G(torch.randn(8, 24), torch.randint(0, 10, (8,)))
    G.eval()
    before = copy.deepcopy(G.state_dict())
    seen = []
    hook = G.blocks[1].bn2.bn.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    assert standing_stats(G, passes=3, batch=8, seed=5) == 2 * len(G.blocks) + 1
    hook.remove()
    after = G.state_dict()
    stat = ("running_mean", "running_var", "num_batches_tracked")
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.endswith(stat) for k in changed)
    assert all(k in changed for k in after if k.endswith(("running_mean", "running_var")))
    assert len(seen) == 3 and not G.training and all(m.momentum == 0.1 for m in G.modules()
                                                     if isinstance(m, torch.nn.BatchNorm2d))
    bn = G.blocks[1].bn2.bn
    # The mean of 3 batch means / unbiased variances: float32 sums over 8 x 16 x 16 values; rtol a few ulp
    # of float32 times the 3 terms' accumulation.
    want_mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0)
    want_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in seen]).mean(0)
    assert torch.allclose(bn.running_mean, want_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(bn.running_var, want_var, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 3
    G2 = BigGANGenerator(models.DataSpec(32, 3, 10), **TINY).eval()
    G2.load_state_dict(before)
    standing_stats(G2, passes=3, batch=8, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(G2.state_dict().values(), after.values()))  # seeded


def test_standing_statistics_of_a_generator_without_batch_norm_is_a_one_line_error(tmp_path, capsys):
    from gantrain.cli import main as cli_main
    from gantrain.train.checkpoint import write_export

    cfg = config_mod.from_dict({"data": {"path": "x"}, "model": {"name": "progan", "channels": 8,
                                                                 "max_channels": 8, "z_dim": 8}})
    spec = models.DataSpec(8, 1, 0)
    G, _ = models.build(cfg.model, spec)
    meta = {"config": cfg.to_dict(), "spec": dataclasses.asdict(spec), "nimg": 0}
    write_export(tmp_path, "G.safetensors", G.state_dict(), meta)
    assert cli_main(["sample", str(tmp_path / "G.safetensors"), "--out", str(tmp_path / "x.png"),
                     "--standing-stats", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("gantrain: error: --standing-stats: ") and "has no batch norm" in err
    assert not (tmp_path / "x.png").exists()


def test_truncation_by_resampling_and_through_render():
    from gantrain.models.base import resample_truncation
    from gantrain.visual import render

    z = torch.randn(64, 120, generator=torch.Generator().manual_seed(0))
    t = resample_truncation(z, 0.5)
    inside = z.abs() <= 0.5
    assert (t.abs() <= 0.5).all() and torch.equal(t[inside], z[inside]) and not torch.equal(t, z)
    assert torch.equal(resample_truncation(z, 0.5), t)  # deterministic
    assert torch.equal(resample_truncation(z, 0.0), torch.zeros_like(z))  # the limit (psi 0 of the sweeps)
    G = BigGANGenerator(models.DataSpec(32, 3, 10), **TINY).eval()
    z, c = torch.randn(4, 24), torch.arange(4)
    assert torch.equal(render(G, z, c, psi=1.0), render(G, z, c))  # 1: no truncation
    assert not torch.equal(render(G, z, c, psi=0.5), render(G, z, c))
    assert torch.equal(render(G, z, c, psi=0.5), render(G, resample_truncation(z, 0.5), c))


PRESETS = [("biggan", 5e-5, 2e-4, 2, 5e-5, 1e-8), ("biggan-ref", 1e-4, 4e-4, 1, 0.0, 1e-6)]


@pytest.mark.parametrize("preset,g_lr,d_lr,d_steps,ortho,eps", PRESETS)
def test_the_paper_and_reference_presets(preset, g_lr, d_lr, d_steps, ortho, eps):
    cfg = config_mod.from_dict({"preset": preset, "data": {"path": "x"}, "model": {"conditional": True}})
    want = ("biggan", "both", "ortho", "hinge")
    assert (cfg.model.name, cfg.model.spectral_norm, cfg.model.init, cfg.loss.name) == want
    assert (cfg.optim.g_lr, cfg.optim.d_lr, cfg.train.d_steps, cfg.loss.ortho.weight, cfg.optim.eps) == \
        (g_lr, d_lr, d_steps, ortho, eps)
    iteration = d_steps * 2048  # images D sees per G iteration: the unit of the reference's EMA settings
    assert cfg.optim.betas == [0.0, 0.999] and cfg.train.ema_start * 1000 == 20_000 * iteration
    assert 0.5 ** (iteration / (cfg.train.ema_kimg * 1000)) == pytest.approx(0.9999, abs=1e-8)
