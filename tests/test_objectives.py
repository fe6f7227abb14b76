"""Each adversarial loss and regularizer against hand-computed values and gradients on fixed logits,
sign conventions through one optimizer step, and the options wired through the loop and config."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from gantrain import config as config_mod
from gantrain import losses
from gantrain.config import ConfigError
from gantrain.train.loop import run

REAL = [2.0, 0.5]
FAKE = [0.5, -3.0]


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _d_value_and_grads(fn, **kwargs):
    real = torch.tensor(REAL, requires_grad=True)
    fake = torch.tensor(FAKE, requires_grad=True)
    value = fn(real, fake, **kwargs)
    value.sum().backward()
    return value.detach().tolist(), real.grad.tolist(), fake.grad.tolist()


def _g_value_and_grad(fn):
    fake = torch.tensor(FAKE, requires_grad=True)
    value = fn(fake)
    value.sum().backward()
    return value.detach().tolist(), fake.grad.tolist()


# D losses: (value per sample, d/d real, d/d fake), written out by hand.
D_CASES = {
    "logistic": (losses.d_logistic_loss, {},
                 [_softplus(-r) + _softplus(f) for r, f in zip(REAL, FAKE)],
                 [-_sig(-r) for r in REAL], [_sig(f) for f in FAKE]),
    "logistic smoothed 0.1": (losses.d_logistic_loss, {"smoothing": 0.1},
                              [0.9 * _softplus(-r) + 0.1 * _softplus(r) + _softplus(f) for r, f in zip(REAL, FAKE)],
                              [-0.9 * _sig(-r) + 0.1 * _sig(r) for r in REAL], [_sig(f) for f in FAKE]),
    "wasserstein": (losses.d_wasserstein_loss, {}, [-1.5, -3.5], [-1.0, -1.0], [1.0, 1.0]),
    # max(0, 1 - r): r=2 -> 0 (no gradient), r=0.5 -> 0.5; max(0, 1 + f): f=0.5 -> 1.5, f=-3 -> 0.
    "hinge": (losses.d_hinge_loss, {}, [1.5, 0.5], [0.0, -1.0], [1.0, 0.0]),
    "least squares": (losses.d_least_squares_loss, {}, [0.5 * 1 + 0.5 * 0.25, 0.5 * 0.25 + 0.5 * 9],
                      [1.0, -0.5], [0.5, -3.0]),
    "least squares smoothed 0.1": (losses.d_least_squares_loss, {"smoothing": 0.1},
                                   [0.5 * 1.1 ** 2 + 0.5 * 0.25, 0.5 * 0.4 ** 2 + 0.5 * 9], [1.1, -0.4], [0.5, -3.0]),
}


@pytest.mark.parametrize("case", list(D_CASES))
def test_d_losses_value_and_gradient(case):
    fn, kwargs, value, d_real, d_fake = D_CASES[case]
    got = _d_value_and_grads(fn, **kwargs)
    for a, b in zip(got, (value, d_real, d_fake)):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)


def test_label_smoothing_is_cross_entropy_with_soft_real_target():
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    expected = (F.binary_cross_entropy_with_logits(real, torch.full_like(real, 0.9), reduction="none")
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake), reduction="none"))
    assert torch.allclose(losses.d_logistic_loss(real, fake, 0.1), expected)


G_CASES = {
    "minimax": (losses.g_minimax_loss, [-_softplus(f) for f in FAKE], [-_sig(f) for f in FAKE]),
    "nonsaturating": (losses.g_nonsaturating_loss, [_softplus(-f) for f in FAKE], [-_sig(-f) for f in FAKE]),
    "wasserstein": (losses.g_wasserstein_loss, [-f for f in FAKE], [-1.0, -1.0]),
    "least squares": (losses.g_least_squares_loss, [0.5 * (f - 1) ** 2 for f in FAKE], [f - 1 for f in FAKE]),
}


@pytest.mark.parametrize("case", list(G_CASES))
def test_g_losses_value_and_gradient(case):
    fn, value, grad = G_CASES[case]
    got_value, got_grad = _g_value_and_grad(fn)
    assert got_value == pytest.approx(value, rel=1e-6)
    assert got_grad == pytest.approx(grad, rel=1e-6)


def test_minimax_g_gradient_vanishes_when_d_rejects_fakes():
    """The seeds' argument for the non-saturating loss: at D(G(z)) = sigmoid(-10) the minimax gradient is
    ~4.5e-5, the non-saturating one ~1."""
    fake = torch.tensor([-10.0], requires_grad=True)
    losses.g_minimax_loss(fake).sum().backward()
    minimax = fake.grad.abs().item()
    fake.grad = None
    losses.g_nonsaturating_loss(fake).sum().backward()
    assert minimax < 1e-4 and fake.grad.abs().item() > 0.99


@pytest.mark.parametrize("name", list(losses.OBJECTIVES))
def test_sign_conventions_one_step(name):
    """Reals at +1, fakes at theta = -1, D(x) = w x + b. One step on D's loss must raise D(real) - D(fake)
    (D maximizes its objective); one step on G's loss must raise D(G(z)) by moving theta towards the data."""
    d_loss, g_loss = losses.OBJECTIVES[name]
    w = torch.tensor(0.1, requires_grad=True)
    b = torch.tensor(0.0, requires_grad=True)
    theta = torch.tensor(-1.0, requires_grad=True)
    real = torch.ones(4)

    def score(x):
        return w * x + b

    gap_before = (score(1.0) - score(theta)).item()
    opt_d = torch.optim.SGD([w, b], lr=0.1)
    d_loss(score(real), score(theta.detach().expand(4))).mean().backward()
    opt_d.step()
    assert (score(1.0) - score(theta)).item() > gap_before

    opt_g = torch.optim.SGD([theta], lr=0.1)
    fake_score_before = score(theta).item()
    g_loss(score(theta.expand(4))).mean().backward()
    opt_g.step()
    assert score(theta).item() > fake_score_before and theta.item() > -1.0


def _linear_critic(a: torch.Tensor):
    x = torch.randn(6, a.numel(), requires_grad=True)
    return x, x @ a


def test_gradient_penalty_zero_for_unit_gradient_critic_and_positive_otherwise():
    unit = torch.tensor([0.6, 0.8])  # ||a|| = 1: a 1-Lipschitz linear critic with unit gradient norm
    x, logits = _linear_critic(unit)
    assert losses.gradient_penalty(logits, x).abs().max() < 1e-10
    for a, two_sided, one_sided in (([1.2, 1.6], 1.0, 1.0), ([0.3, 0.4], 0.25, 0.0)):  # norms 2 and 0.5
        x, logits = _linear_critic(torch.tensor(a))
        assert torch.allclose(losses.gradient_penalty(logits, x), torch.full((6,), two_sided), atol=1e-6)
        assert torch.allclose(losses.gradient_penalty(logits, x, one_sided=True), torch.full((6,), one_sided),
                              atol=1e-6)
    x, logits = _linear_critic(torch.tensor([1.2, 1.6]))
    assert torch.allclose(losses.gradient_penalty(logits, x, center=0.0), torch.full((6,), 4.0), atol=1e-5)


def test_gradient_penalty_gradient_reaches_the_critic():
    a = torch.tensor([1.2, 1.6], requires_grad=True)  # ||a|| = 2: d/da (||a|| - 1)^2 = 2 (||a|| - 1) a / ||a||
    x = torch.randn(3, 2, requires_grad=True)
    losses.gradient_penalty(x @ a, x).mean().backward()
    assert torch.allclose(a.grad, 2 * 1.0 * torch.tensor([1.2, 1.6]) / 2.0, atol=1e-5)


def test_r1_and_r2_closed_form_for_linear_d():
    a = torch.tensor([1.0, -2.0, 2.0])  # ||grad||^2 = 9 everywhere
    x, logits = _linear_critic(a)
    assert torch.allclose(losses.r1_penalty(logits, x), torch.full((6,), 9.0))
    assert torch.allclose(losses.r2_penalty(logits, x), torch.full((6,), 9.0))


def test_interpolate_endpoints():
    real, fake = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    mixed = losses.interpolate(real, fake, torch.tensor([1.0, 0.25]))
    assert torch.equal(mixed[0], real[0]) and torch.allclose(mixed[1], torch.full((3, 4, 4), 0.25))


def test_drift_feature_matching_acgan_values():
    assert losses.drift_penalty(torch.tensor([2.0, -3.0])).tolist() == [4.0, 9.0]
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3)
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # mean (1, 1): ||(1, 2)||^2 = 5
    assert losses.feature_matching_loss(real, fake).item() == pytest.approx(5.0)
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 1 + math.exp(-1.0)))
    assert losses.acgan_loss(logits, torch.tensor([0])).item() == pytest.approx(expected)


def test_orthogonal_penalty_value_and_gradient():
    q, _ = torch.linalg.qr(torch.randn(5, 5))
    assert losses.orthogonal_penalty([q]).item() < 1e-10  # orthogonal filters: no penalty
    w = torch.tensor([[1.0, 1.0], [1.0, 0.0]], requires_grad=True)  # W W^T = [[2, 1], [1, 1]]: off-diagonal 1, 1
    value = losses.orthogonal_penalty([w])
    assert value.item() == pytest.approx(2.0)
    value.backward()  # d/dW ||A||^2 with A = off-diagonal of W W^T: 4 A W = 4 [[0, 1], [1, 0]] W
    assert torch.allclose(w.grad, torch.tensor([[4.0, 0.0], [4.0, 4.0]]))
    conv = torch.randn(4, 3, 3, 3)  # filters are rows of the [out, in * k * k] view
    flat = conv.flatten(1)
    off = (flat @ flat.t()) * (1 - torch.eye(4))
    assert losses.orthogonal_penalty([conv]).item() == pytest.approx(off.square().sum().item(), rel=1e-5)


# ---- config and loop wiring --------------------------------------------------------------------------
def test_presets_fill_in_and_yield_to_the_config():
    cfg = config_mod.from_dict({"data": {"path": "x"}, "preset": "wgan", "optim": {"d_lr": 1e-4}})
    assert (cfg.loss.name, cfg.loss.clip, cfg.train.d_steps, cfg.optim.name) == ("wgan", 0.01, 5, "rmsprop")
    assert cfg.optim.g_lr == 5e-5 and cfg.optim.d_lr == 1e-4  # the config's own value wins
    gp = config_mod.from_dict({"data": {"path": "x"}, "preset": "wgan-gp"})
    assert gp.loss.gp.weight == 10 and gp.optim.betas == [0.0, 0.9]
    with pytest.raises(ConfigError, match=r"^preset: unknown preset 'wgan_gp' \(did you mean 'wgan-gp'\?\)"):
        config_mod.from_dict({"data": {"path": "x"}, "preset": "wgan_gp"})


def test_command_line_preset_overrides_the_file_and_later_items_override_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {path: x}\nloss: {name: nonsaturating, r1: {weight: 0.1}}\noptim: {g_lr: 0.001}\n")
    cfg = config_mod.load(path, ["preset=wgan-gp", "optim.d_lr=0.0003"])
    assert (cfg.loss.name, cfg.loss.gp.weight, cfg.optim.g_lr, cfg.optim.d_lr) == ("wgan-gp", 10.0, 1e-4, 3e-4)
    assert cfg.loss.r1.weight == 0.1 and cfg.preset == "wgan-gp"  # what the preset does not set stays
    assert config_mod.load(path, ["optim.g_lr=0.002", "preset=wgan-gp"]).optim.g_lr == 1e-4
    assert config_mod.from_dict(cfg.to_dict()) == cfg  # the saved resolved config reloads to the same


@pytest.mark.parametrize("tree, key", [
    ({"loss": {"name": "hinge", "label_smoothing": 0.1}}, "loss.label_smoothing"),
    ({"loss": {"name": "wgan-gp"}}, "loss.gp.weight"),
    ({"loss": {"clip": 0.01}, "engine": {"name": "deepspeed", "zero_stage": 2}}, "loss.clip"),
    ({"loss": {"gp": {"weight": 1, "interval": 0}}}, "loss.gp.interval"),
    ({"loss": {"r1": {"weight": 1, "interval": 1}}, "engine": {"name": "deepspeed", "zero_stage": 2}},
     "loss.r1.interval"),
    ({"loss": {"r1": {"weight": 1}}, "engine": {"name": "deepspeed", "zero_stage": 0}}, "loss.r1.weight"),
    ({"model": {"conditioning": "acgan"}}, "model.conditioning"),
    ({"model": {"name": "mlp"}}, "model.name"),
    ({"model": {"name": "dcgan"}, "data": {"toy": {"name": "ring"}}}, "model.name"),
    ({"loss": {"r1": {"weight": -1}}}, "loss.r1.weight"),
    ({"optim": {"name": "adagrad"}}, "optim.name"),
])
def test_bad_loss_and_model_combinations_name_the_key(tree, key):
    tree = {"data": {"path": "x", **tree.pop("data", {})}, **tree}
    with pytest.raises(ConfigError) as err:
        config_mod.from_dict(tree)
    assert err.value.key == key and "\n" not in str(err.value)


WIRING = {
    "minimax + label smoothing": ({"name": "minimax", "label_smoothing": 0.1}, {}, ["Loss/D", "Loss/G"]),
    "wgan clip (rmsprop)": ({"name": "wgan", "clip": 0.01}, {}, ["Loss/D"]),
    "wgan-gp lazy": ({"name": "wgan-gp", "gp": {"weight": 10.0, "interval": 2}}, {"norm": "none"},
                     ["Loss/GP", "GradNorm/Dgp"]),
    "hinge + sn + r2 + drift": ({"name": "hinge", "r2": {"weight": 1.0, "interval": 1},
                                 "drift": {"weight": 0.001}}, {"spectral_norm": "both"}, ["Loss/R2", "Loss/drift"]),
    "lsgan + ortho + fm + noise": (
        {"name": "lsgan", "ortho": {"weight": 1e-4}, "feature_matching": 1.0,
         "instance_noise": {"std": 0.1, "anneal_kimg": 0.05}},
        {"minibatch": "stddev"}, ["Loss/ortho", "Loss/feature_matching"]),
    "acgan + minibatch discrimination": ({"r1": {"weight": 1.0, "interval": 2}},
                                         {"conditional": True, "conditioning": "acgan",
                                          "minibatch": "discrimination", "minibatch_kernels": 8},
                                         ["Loss/D_aux", "Loss/G_aux", "GradNorm/Dr1"]),
    "projection + gp zero-centred": ({"gp": {"weight": 1.0, "center": 0.0}},
                                     {"conditional": True, "conditioning": "projection"}, ["Loss/GP"]),
}


@pytest.mark.parametrize("case", list(WIRING))
def test_every_option_trains_through_the_loop(digits16, tmp_path, case):
    loss, model, tags = WIRING[case]
    optim = {"name": "rmsprop"} if loss.get("clip") else {}
    cfg = tiny_config(digits16, loss=loss, model=model, optim=optim, train={"kimg": 0.064})
    result = run(cfg, tmp_path)
    scalars = result["scalars"]
    for tag in tags + ["Loss/D", "GradNorm/Dmain", "GradNorm/Gmain"]:
        assert math.isfinite(scalars[tag]), tag
    if loss.get("clip"):
        state = torch.load(result["checkpoint"], weights_only=True)
        weights = [v for k, v in state["D"]["model"].items() if v.is_floating_point() and "running" not in k]
        assert max(w.abs().max().item() for w in weights) <= 0.01 + 1e-7


def test_orthogonal_regularization_sees_equalized_layers_as_applied():
    """ProGAN's layers keep N(0, 1) weights and a run-time scale: the penalty must see the scaled ones."""
    from gantrain.models.layers import EqualizedConv2d, EqualizedLinear
    from gantrain.train.loop import _filters

    net = torch.nn.Sequential(EqualizedLinear(16, 8), EqualizedConv2d(8, 4, 3))
    filters = _filters(net)
    assert [tuple(w.shape) for w in filters] == [(8, 16), (4, 8, 3, 3)]
    assert torch.allclose(filters[0], net[0].weight * net[0].scale)
