"""Numerical faults: inf/NaN never reach the weights, G_ema, a checkpoint, an export or stats.jsonl."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import tiny_config
from gantrain.cli import main as cli_main
from gantrain.engines.base import Net
from gantrain.train import checkpoint
from gantrain.train.guard import DivergedError, StepGuard
from gantrain.train.loop import run


def _strict_json(line: str) -> dict:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


def _all_finite(tree) -> bool:
    if isinstance(tree, torch.Tensor):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(_all_finite(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_all_finite(v) for v in tree)
    return True


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_diverging_run_stops_with_one_line_and_never_saves_non_finite_values(digits16, tmp_path, precision):
    """lr 1e30: after one step every forward overflows (batch-norm running_var, losses, gradients).
    Every such step is rolled back, so checkpoints, exports and G_ema stay finite, and the run ends with
    an error naming the kimg and the last good checkpoint instead of exiting 0 on garbage."""
    cfg = tiny_config(digits16, optim={"g_lr": 1e30, "d_lr": 1e30}, engine={"precision": precision},
                      train={"kimg": 3.2, "max_bad_steps": 8}, model={"norm": "batch"},
                      log={"tick_kimg": 0.016, "snapshot_kimg": 0.016, "keep": 100})
    with pytest.raises(DivergedError) as info:
        run(cfg, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "8 steps in a row" in message and "kimg" in message
    saved = checkpoint.list_checkpoints(tmp_path)
    if saved:
        assert str(saved[-1]) in message
    for path in saved:
        state = checkpoint.load(path)
        assert _all_finite(state), path
    for export in tmp_path.glob("G_ema-*.safetensors"):
        from safetensors.torch import load_file
        assert _all_finite(load_file(export)), export
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    records = [_strict_json(line) for line in lines]
    assert any(r.get("Skipped/nonfinite", 0) > 0 for r in records)


def test_a_non_finite_gradient_skips_the_step_and_leaves_the_optimizer_alone():
    model = nn.Linear(3, 1)
    net = Net(model, model, torch.optim.Adam(model.parameters(), lr=0.1))
    net.backward(model(torch.ones(2, 3)).sum())
    assert net.step()[0]
    before = [t.clone() for t in net.state_tensors()]
    net.backward(model(torch.ones(2, 3)).sum() * float("nan"))
    applied, norm = net.step()
    assert not applied and not torch.isfinite(norm)
    assert all(torch.equal(a, b) for a, b in zip(before, net.state_tensors()))
    assert all(p.grad is None for p in model.parameters())


def test_the_guard_rolls_weights_buffers_and_optimizer_state_back_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    net = Net(model, model, torch.optim.Adam(model.parameters(), lr=0.1))
    guard = StepGuard()
    for blow_up, first in ((False, True), (True, False)):
        guard.keep([net])
        before = [t.clone() for t in net.state_tensors()]
        x = torch.randn(8, 3) * (1e30 if blow_up else 1.0)  # BN's running_var overflows to inf
        net.backward(model(x).square().mean())
        net.step()
        if not blow_up:
            assert guard.finite([net])
            continue
        assert not guard.finite([net])
        guard.revert([net])
        assert guard.finite([net])
        assert all(torch.equal(a, b) for a, b in zip(before, net.state_tensors()))


def test_first_step_rollback_leaves_a_fresh_optimizer():
    model = nn.Linear(3, 1)
    net = Net(model, model, torch.optim.Adam(model.parameters(), lr=0.1))
    guard = StepGuard()
    guard.keep([net])
    weights = [p.clone() for p in model.parameters()]
    net.backward(model(torch.ones(2, 3)).sum())
    net.step()
    with torch.no_grad():
        model.weight.fill_(float("inf"))
    guard.revert([net])
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(float(t.abs().sum()) == 0 for t in net.state_tensors()[2:])  # step counts and moments zeroed


def test_checkpoints_and_exports_with_non_finite_values_are_refused(digits16, tmp_path, capsys):
    run(tiny_config(digits16, train={"kimg": 0.016}), tmp_path / "r")
    path = checkpoint.list_checkpoints(tmp_path / "r")[-1]
    state = checkpoint.load(path)
    name = next(iter(state["G_ema"]))
    state["G_ema"][name] = state["G_ema"][name].float() * float("inf")
    with pytest.raises(checkpoint.CheckpointError, match="non-finite"):
        checkpoint.save(tmp_path / "r", state, 999, 10, state["G_ema"], {})
    assert not (tmp_path / "r" / checkpoint.checkpoint_name(999)).exists()
    # An export written by something else (an older version) is refused by `gantrain sample` with one line.
    export = next((tmp_path / "r").glob("G_ema-*.safetensors"))
    from safetensors import safe_open
    with safe_open(str(export), "pt") as f:
        meta, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    weights[name] = weights[name].float() * float("nan")
    bad = tmp_path / "bad.safetensors"
    save_file(weights, str(bad), metadata=meta)
    capsys.readouterr()
    assert cli_main(["sample", str(bad), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.safetensors" in err and "inf/NaN" in err
    assert not (tmp_path / "g.png").exists()
