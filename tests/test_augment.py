"""Differentiable augmentation (gantrain.augment): identities, per-op results, gradients, non-leaking,
ADA's controller, and the trainer's use of it (every D input, exact resume)."""

import math

import pytest
import torch

from conftest import tiny_config
from gantrain.augment import PIPES, AdaPipe, Augment, Draws, _transform, adjust_p, filter_bank
from gantrain.config import ConfigError
from gantrain.train import checkpoint
from gantrain.train.loop import run

IDENTITY_ERROR = 1e-5  # sym6 is orthogonal: 2x up then down through it is the identity to float32 rounding
SINGLE_OPS = sorted({op for ops in PIPES.values() for op in ops})


def _pipe(**ops) -> AdaPipe:
    pipe = AdaPipe("bgc")
    pipe.ops = ops
    return pipe


def _images(n=8, c=3, size=16, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _draws(seed=1):
    return Draws(torch.Generator().manual_seed(seed))


def _filtered(x):
    """What the geometric path does to X with an identity transform (up, sample, down)."""
    return _transform(x, torch.eye(3).expand(x.shape[0], 3, 3))


def test_p0_is_the_identity_bit_exact_and_the_filter_pass_is_lossless():
    x = _images()
    assert torch.equal(AdaPipe("bgc")(x, 0.0, _draws()), x)
    assert torch.equal(Augment("none")(x, 0.5, _draws()), x)
    assert (_filtered(x) - x).abs().max() < IDENTITY_ERROR


@pytest.mark.parametrize("op", SINGLE_OPS)
def test_every_ada_op_at_p1_changes_the_image_keeps_shape_and_passes_gradients(op):
    x = _images(c=3).requires_grad_(True)
    y = _pipe(**{op: 1})(x, 1.0, _draws())
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert (y - x).abs().max() > 1e-3
    # range: geometric, cutout and flip ops only move or drop pixels (filter overshoot aside)
    if op in ("xflip", "rotate90", "xint", "cutout", "scale", "rotate", "aniso", "xfrac"):
        assert y.abs().max() < 1.5
    weights = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * weights).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_the_filter_bank_splits_an_image_into_four_bands_that_sum_to_it():
    """The image-space filter's bank (the reference's, from symlet-2): its rows add up to a unit impulse,
    since the wavelet is orthogonal (float64 rounding over 43 taps: < 1e-11); only band 0 passes a constant
    image (its taps sum to 1, the other bands' to 0), so a flat image comes out scaled by band 0's gain alone.
    With every gain 1 (p so small that no band is drawn) the pipe returns the image to float32 rounding."""
    bank = filter_bank()
    assert bank.shape == (4, 43)
    impulse = torch.zeros(43, dtype=torch.float64)
    impulse[21] = 1
    assert (bank.sum(0) - impulse).abs().max() < 1e-11
    assert (bank.sum(1) - torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)).abs().max() < 1e-11
    x = _images(size=16)  # smaller than the 21-pixel padding: reflected more than once
    assert (AdaPipe("filter")(x, 1e-9, _draws()) - x).abs().max() < 1e-5
    flat = torch.full((6, 1, 32, 32), 0.5)
    y = AdaPipe("filter")(flat, 1.0, _draws())
    per_image = y.flatten(1)
    assert (per_image - per_image[:, :1]).abs().max() < 1e-5  # still flat
    assert (per_image[:, 0] - 0.5).abs().max() > 1e-3  # but band 0's gain moved its level


@pytest.mark.parametrize("op", ["color", "translation", "cutout"])
def test_every_diffaugment_op_changes_the_image_and_passes_gradients(op):
    x = _images().requires_grad_(True)
    y = Augment("diffaugment", op)(x, 0.0, _draws())
    assert y.shape == x.shape and (y - x).abs().max() > 1e-3
    (grad,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_blit_ops_against_hand_computed_images():
    """x-flip: each image is itself or its mirror, both occur; rotate90: one of its four rotations, all
    occur; integer translation: a shift of at most 1/8 of the size (interior compared, reflect-padded
    borders aside). Shifts are exact to rounding; a mirror or rotation is exact up to sym6's asymmetry
    (the 2x image is flipped between an asymmetric up- and down-filter, as in the reference): measured
    0.31 at worst on uniform noise (other candidates >= 1.8), so flips are checked as "the nearest
    candidate, by a margin of 4x"."""
    x = _images(n=64, c=1)
    for op, candidates in (("xflip", lambda im: [im, im.flip(-1)]),
                           ("rotate90", lambda im: [torch.rot90(im, k, dims=(-2, -1)) for k in range(4)])):
        y = _pipe(**{op: 1})(x, 1.0, _draws())
        seen = set()
        for i in range(len(x)):
            errors = [float((y[i] - c).abs().max()) for c in candidates(x[i])]
            best, second = sorted(errors)[:2]
            assert best < 0.5 and best * 4 < second, (op, i, errors)
            seen.add(errors.index(best))
        assert seen == set(range(len(candidates(x[0])))), op
    y = _pipe(xint=1)(x, 1.0, _draws())
    shift = round(0.125 * 16)
    inner = slice(shift, 16 - shift)
    for i in range(len(x)):
        best = min(float((y[i, :, inner, inner] - torch.roll(x[i], (dy, dx), dims=(-2, -1))[:, inner, inner])
                         .abs().max()) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1))
        assert best < IDENTITY_ERROR, i


def test_color_ops_against_hand_computed_images():
    """Brightness adds one offset per image (std 0.2), contrast multiplies by one factor per image (log2 std
    0.5), saturation scales the chroma around the per-pixel gray (log2 std 1) keeping the gray; 4,096
    images, so the stds agree to the sampling error of a std (~1/sqrt(2n) relative, 4 sigma)."""
    n = 4096
    bound = 4 / math.sqrt(2 * n)
    x = _images(n=n, c=3, size=4)
    offset = _pipe(brightness=1)(x, 1.0, _draws()) - x
    assert (offset - offset.mean(dim=[1, 2, 3], keepdim=True)).abs().max() < 1e-6
    assert abs(offset.mean(dim=[1, 2, 3]).std() / 0.2 - 1) < bound
    ratio = _pipe(contrast=1)(x, 1.0, _draws()) / x
    assert (ratio - ratio.mean(dim=[1, 2, 3], keepdim=True)).abs().max() < 1e-4
    assert abs(ratio.mean(dim=[1, 2, 3]).log2().std() / 0.5 - 1) < bound
    y = _pipe(saturation=1)(x, 1.0, _draws())
    gray_x, gray_y = x.mean(dim=1, keepdim=True), y.mean(dim=1, keepdim=True)
    assert (gray_y - gray_x).abs().max() < 1e-5
    s = ((y - gray_y) / (x - gray_x)).median(dim=1).values.flatten(1).median(dim=1).values
    assert abs(s.log2().std() - 1) < bound


def test_scaling_by_two_then_back_returns_the_image_up_to_the_filter():
    """Zoom in by 2 then out by 2: the centre half comes back. Error bound: bilinear sampling of the 2x
    sym6-interpolated image is exact only for content the interpolation reproduces; for a smooth image
    (one cycle across) measured 0.015 at worst (the centre's edge), asserted < 0.03; the filter pass alone
    is lossless (above)."""
    grid = torch.linspace(-1, 1, 32)
    x = (torch.sin(math.pi * grid)[None, :] * torch.cos(math.pi * grid)[:, None]).expand(2, 1, 32, 32)
    n = x.shape[0]
    zoom = torch.diag(torch.tensor([0.5, 0.5, 1.0])).expand(n, 3, 3)  # inverse of a scaling by 2
    back = _transform(_transform(x, zoom), torch.linalg.inv(zoom))
    centre = slice(8, 24)
    assert (back[..., centre, centre] - x[..., centre, centre]).abs().max() < 0.03


def test_the_deterministic_gpu_path_equals_grid_sample_through_the_double_backward(monkeypatch):
    """Under run.deterministic on CUDA, where grid_sample's and reflection padding's backwards have no
    deterministic kernel, _transform samples by gathers and pads by index_select. Forced here on CPU: the
    same images, input gradients and R1-style gradients of the gradient norm. Bound: the two compute the
    sampling coordinates in different orders, one float32 ulp of a coordinate up to 2 * (side + 2 pads)
    each, times the image's steepest step between neighbours; the weights then sum 4 terms."""
    from gantrain import augment

    torch.manual_seed(0)
    x = torch.randn(3, 2, 12, 12, dtype=torch.float32, requires_grad=True)
    angle = torch.tensor([0.3, -1.1, 2.0])
    c, s = angle.cos(), angle.sin()
    g = torch.zeros(3, 3, 3)
    g[:, 0, 0], g[:, 0, 1], g[:, 1, 0], g[:, 1, 1], g[:, 2, 2] = 0.8 * c, -s, s, 1.2 * c, 1
    g[:, 0, 2], g[:, 1, 2] = torch.tensor([0.5, -1.5, 2.25]), torch.tensor([-0.25, 1.0, 0.0])

    def run_once():
        y = _transform(x, g)
        (grad,) = torch.autograd.grad((y.square() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), x,
                                      create_graph=True)
        (grad2,) = torch.autograd.grad(grad.square().sum(), x)
        return y.detach(), grad.detach(), grad2

    pads = [3, 2, 11, 4]
    assert torch.equal(augment._reflect_pad_index(x, pads), torch.nn.functional.pad(x, pads, mode="reflect"))
    reference = run_once()
    monkeypatch.setattr(augment, "_deterministic_gpu", lambda _: True)
    gathered = run_once()
    coordinate_ulp = 2.0 ** -24 * 2 * (12 + 2 * 12)
    for a, b in zip(reference, gathered):
        steepest = (a.diff(dim=-1).abs().max() + a.diff(dim=-2).abs().max()).item()
        bound = 4 * coordinate_ulp * steepest + 4 * 2.0 ** -24 * a.abs().max().item()
        assert (a - b).abs().max().item() <= bound, ((a - b).abs().max().item(), bound)


def test_the_blit_ops_do_not_leak_below_p_1():
    """The reference's invertibility argument, numerically: the augmentation acts on the distribution
    over an asymmetric image's 8 orientations (x-flips x 90-degree rotations) as a matrix M estimated from
    the pipe. For p < 1 M is invertible (its smallest singular value is about (1 - p)^2), so a generator that
    outputs already-augmented images (q = M r) is told apart after augmentation (M q != M r): the
    augmented real distribution is not a fixed point, and the only q with M q = M r is r itself."""
    base = torch.zeros(1, 1, 8, 8)
    base[..., 1, 1:6] = 1
    base[..., 1:7, 1] = 1
    base[..., 4, 1:4] = 1  # an "F": all 8 orientations differ
    orientations = [torch.rot90(im, k, dims=(-2, -1)) for im in (base, base.flip(-1)) for k in range(4)]
    stack = torch.cat(orientations)
    pipe = AdaPipe("blit")
    pipe.ops = dict(xflip=1, rotate90=1)
    trials = 1000
    for p in (0.2, 0.5, 0.79):
        m = torch.zeros(8, 8)
        for j, image in enumerate(orientations):
            out = pipe(image.expand(trials, 1, 8, 8), p, _draws(j))
            nearest = ((out[:, None] - stack[None]).flatten(2).abs().amax(2)).argmin(1)
            m[:, j] = torch.bincount(nearest, minlength=8).float() / trials
        singular = torch.linalg.svdvals(m)
        if p <= 0.5:  # flips and rotations each with probability p: (1 - p)^2, less the sampling error (~0.05)
            assert singular.min() > (1 - p) ** 2 - 0.08, (p, singular)
        r = torch.zeros(8)
        r[0] = 1
        assert (m @ (m @ r) - m @ r).abs().sum() > 0.1, p


def test_adjust_p_moves_at_the_configured_speed_and_clamps():
    assert adjust_p(0.0, 1.0, 0.6, 64, 0.64) == pytest.approx(0.1)  # 64 images of 640 for 0 -> 1
    assert adjust_p(0.05, -1.0, 0.6, 64, 0.64) == 0.0
    assert adjust_p(0.95, 1.0, 0.6, 64, 0.64) == 1.0
    assert adjust_p(0.3, 0.6, 0.6, 64, 0.64) == 0.3


def _ada(**values):
    return {"name": "ada", "pipe": "bgc", **values}


@pytest.mark.parametrize("bias, start, want", [(50.0, 0.0, 5 * 0.1), (-50.0, 0.5, 0.0)])
def test_an_overfitting_d_raises_p_at_the_rate_and_a_d_at_chance_lowers_it(digits16, tmp_path, bias, start, want):
    """D's output forced to one sign: sign(D(real)) = +1 (overfitting) raises p by 16 * 2 / 320 = 0.1 per
    adjustment (10 steps, every 2); -1 (below the target, as a D at chance is) takes it to 0 and keeps it."""
    from gantrain.engines.single import SingleEngine
    from gantrain.data.stream import read_manifest
    from gantrain.train.loop import Trainer, resolve

    cfg = tiny_config(digits16, augment=_ada(p=start, interval=2, speed_kimg=0.32))
    cfg = resolve(cfg, read_manifest(digits16), 1)
    trainer = Trainer(cfg, tmp_path, SingleEngine("cpu"))
    last = [m for m in trainer.D_model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(bias)
    trajectory = []
    for _ in range(10):
        trainer.train_step()
        trajectory.append(trainer.aug_p)
    trainer.loader.close()
    assert trajectory[-1] == pytest.approx(want)
    assert trajectory[1] == pytest.approx(min(max(start + math.copysign(0.1, bias), 0), 1))


def test_training_with_ada_resumes_bit_exactly_with_p_and_rt(digits16, tmp_path):
    """ADA with R1 (augmented reals under the double backward): 10 steps straight == 5, stop, resume; the
    stop falls inside an adjustment interval of 3, so r_t's partial sums are restored too; p moved."""
    sections = dict(augment=_ada(p=0.4, interval=3, speed_kimg=0.16), loss={"r1": {"weight": 1.0, "interval": 2}},
                    log={"snapshot_kimg": 0.08})
    straight = run(tiny_config(digits16, train={"kimg": 0.16}, **sections), tmp_path / "a")
    run(tiny_config(digits16, train={"kimg": 0.08}, **sections), tmp_path / "b")
    resumed = run(tiny_config(digits16, train={"kimg": 0.16}, **sections), tmp_path / "b", resume="auto")
    a, b = checkpoint.load(straight["checkpoint"]), checkpoint.load(resumed["checkpoint"])
    assert a["augment"]["p"] == b["augment"]["p"] != 0.4
    assert torch.equal(a["augment"]["rt"], b["augment"]["rt"])
    for net in ("G", "D"):
        for name, value in a[net]["model"].items():
            assert torch.equal(value, b[net]["model"][name]), (net, name)
    assert all(torch.equal(v, b["G_ema"][k]) for k, v in a["G_ema"].items())


def test_diffaugment_trains_a_growing_progan_through_its_fades(digits16, tmp_path):
    """Every D input at every stage (4x4 up to 16x16, fades included) goes through the augmentation."""
    cfg = tiny_config(digits16, model={"name": "progan", "minibatch": "stddev", "z_dim": 16},
                      progressive={"enabled": True, "stabilize_kimg": 0.016, "fade_kimg": 0.032},
                      loss={"name": "wgan-gp", "gp": {"weight": 10.0}, "drift": {"weight": 0.001}},
                      augment={"name": "diffaugment"}, train={"kimg": 0.112})
    result = run(cfg, tmp_path / "p")
    state = checkpoint.load(result["checkpoint"])
    assert state["counters"]["nimg"] == 112


def test_bad_augment_settings_are_one_line_errors(digits16):
    for section, key in (({"name": "ada", "pipe": "nope"}, "augment.pipe"),
                         ({"name": "diffaugment", "policy": "color,blur"}, "augment.policy"),
                         ({"name": "ada", "p": 1.5}, "augment.p"),
                         ({"name": "ada", "target": 1.5}, "augment.target")):
        with pytest.raises(ConfigError) as info:
            tiny_config(digits16, augment=section).validate()
        message = str(info.value)
        assert message.startswith(key) and "\n" not in message, message
