"""The toy problems through the normal loop and config: the Dirac-GAN analysis of Mescheder et al. 2018,
mode coverage on the ring of Gaussians, conditioning, and exact resume with in-loss randomness."""

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gantrain import config as config_mod
from gantrain.cli import main as cli_main
from gantrain.config import ToyConfig
from gantrain.data.toy import ToyLoader, ToyProblem
from gantrain.models import DataSpec, build
from gantrain.train.loop import run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _history(run_dir: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def test_dirac_gan_oscillates_without_regularization_and_converges_with_r1(tmp_path, capsys):
    """Alternating gradient steps on the non-saturating loss circle the equilibrium (theta keeps changing
    sign, the distance stays far from 0); with R1 (gamma 1) they converge to (0, 0)."""
    overrides = ["log.tick_kimg=0.64"]  # a figure every 10 steps
    assert cli_main(["train", str(CONFIGS / "toy-dirac.yaml"), "loss.r1.weight=0", *overrides,
                     "--run-dir", str(tmp_path / "plain")]) == 0
    plain_out = capsys.readouterr().out
    theta = _history(tmp_path / "plain", "Toy/theta")
    distance = _history(tmp_path / "plain", "Toy/distance")
    flips = sum(a * b < 0 for a, b in zip(theta, theta[1:]))
    assert flips >= 4, theta
    assert min(distance) > 0.25, distance  # started at sqrt(2); sublinear at best, as the analysis predicts

    assert cli_main(["train", str(CONFIGS / "toy-dirac.yaml"), *overrides, "--run-dir", str(tmp_path / "r1")]) == 0
    r1_out = capsys.readouterr().out
    distance = _history(tmp_path / "r1", "Toy/distance")
    assert distance[-1] < 1e-4 and distance[-1] < distance[0] / 1000, distance

    # The figures reach TensorBoard and the final line of the run.
    acc = EventAccumulator(str(tmp_path / "r1" / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("Toy/distance")][-1] == pytest.approx(distance[-1])
    assert "final toy figures: distance" in r1_out and "final toy figures: distance" in plain_out
    assert cli_main(["sample", str(tmp_path / "r1" / "G_ema-0000032000.safetensors"), "--out",
                     str(tmp_path / "x.png")]) == 2
    assert "is a toy model: it makes points, not images" in capsys.readouterr().err


@pytest.mark.slow
def test_ring_nonsaturating_r1_covers_all_modes(tmp_path):
    cfg = config_mod.load(CONFIGS / "toy-ring.yaml")
    result = run(cfg, tmp_path)
    assert result["scalars"]["Toy/modes_covered"] == 8
    assert result["scalars"]["Toy/high_quality"] > 0.4
    assert (tmp_path / "fakes-0000384000.png").exists() and (tmp_path / "reals.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("conditioning", ["acgan", "projection"])
def test_conditional_ring_puts_each_class_on_its_mode(tmp_path, conditioning):
    """The mode index is the label: a conditional G must send class k to mode k."""
    cfg = config_mod.load(CONFIGS / "toy-ring.yaml", [
        "model.conditional=true", f"model.conditioning={conditioning}", "train.kimg=128", "log.tick_kimg=128",
        "log.image_kimg=128", "log.snapshot_kimg=128"])
    result = run(cfg, tmp_path)
    problem = ToyProblem(cfg.data.toy)
    state = torch.load(result["checkpoint"], weights_only=True)
    G, _ = build(cfg.model, DataSpec(1, 2, 8))
    G.load_state_dict(state["G"]["model"])
    c = torch.arange(8).repeat_interleave(100)
    with torch.no_grad():
        points = G(torch.randn(800, cfg.model.z_dim, generator=torch.Generator().manual_seed(0)), c)
    nearest = torch.cdist(points, problem.centers).argmin(1)
    assert (nearest == c).float().mean() > 0.9


def test_toy_loader_is_world_size_independent_and_resumable():
    problem = ToyProblem(ToyConfig(name="ring"))
    whole = ToyLoader(problem, 8, seed=1)
    ranks = [ToyLoader(problem, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    x, c = next(whole)
    parts = [next(loader) for loader in ranks]
    assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(c, torch.cat([p[1] for p in parts]))
    state = whole.state_dict()
    expected = next(whole)
    again = next(ToyLoader(problem, 8, seed=1, state=state))
    assert torch.equal(expected[0], again[0])


def test_resume_with_in_loss_randomness_is_bit_exact(tmp_path):
    """Interpolation weights and instance noise come from a generator reseeded from the checkpointed one."""
    overrides = ["preset=wgan-gp", "loss.instance_noise.std=0.1", "train.batch=32", "model.channels=16",
                 "model.minibatch=stddev", "log.tick_kimg=0.32", "log.image_kimg=0.64", "log.snapshot_kimg=0.32"]
    full = run(config_mod.load(CONFIGS / "toy-ring.yaml", overrides + ["train.kimg=0.64"]), tmp_path / "full")
    run(config_mod.load(CONFIGS / "toy-ring.yaml", overrides + ["train.kimg=0.32"]), tmp_path / "half")
    resumed = run(config_mod.load(CONFIGS / "toy-ring.yaml", overrides + ["train.kimg=0.64"]), tmp_path / "half",
                  resume="auto")
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(resumed["checkpoint"], weights_only=True)
    for net in ("G", "D"):
        for key, value in a[net]["model"].items():
            assert torch.equal(value, b[net]["model"][key]), (net, key)
    assert torch.equal(a["data"][0]["generator"], b["data"][0]["generator"])
    assert full["scalars"]["Loss/GP"] == resumed["scalars"]["Loss/GP"]
