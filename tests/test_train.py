"""The loop end to end on real shards: exact resume, accumulation, TensorBoard, checkpoints, CLI."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_config
from equivalence import ADAM_EPS, R1_INTERVAL, tolerance
from gantrain.cli import main as cli_main
from gantrain.data.stream import StreamLoader, read_manifest
from gantrain.train import checkpoint
from gantrain.train.checkpoint import CheckpointError
from gantrain.train.loop import Trainer, resolve, run
from gantrain.engines.single import SingleEngine

REPO = Path(__file__).resolve().parents[1]


def _assert_same_state(a: dict, b: dict) -> None:
    for net in ("G", "D"):
        for key in ("model", "optimizer"):
            _assert_equal_tree(a[net][key], b[net][key], f"{net}.{key}")
    _assert_equal_tree(a["G_ema"], b["G_ema"], "G_ema")
    _assert_equal_tree(a["rng"]["latents"], b["rng"]["latents"], "rng")
    assert a["counters"]["nimg"] == b["counters"]["nimg"] and a["counters"]["step"] == b["counters"]["step"]
    assert a["data"] == b["data"]


def _assert_equal_tree(a, b, where):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs (max {(a.float() - b.float()).abs().max()})"
    else:
        assert a == b, where


def _next_batch(state: dict, data: Path):
    loader = StreamLoader(read_manifest(data), batch_size=16, seed=state["config"]["run"]["seed"],
                          num_workers=state["config"]["data"]["workers"], state=state["data"][0])
    batch = next(loader)
    loader.close()
    return batch


@pytest.mark.slow
def test_resume_and_extension_are_bit_exact(digits16, tmp_path):
    """2N steps in one go == N steps, stop, then --resume auto with a larger train.kimg; and == resuming
    the mid-run checkpoint by path. Lazy R1, two data workers (so the worker turn is mid-rotation)."""
    sections = dict(loss={"r1": {"weight": 1.0, "interval": 3}}, data={"workers": 2},
                    log={"snapshot_kimg": 0.08})  # 5 steps of 16 per snapshot
    straight = run(tiny_config(digits16, train={"kimg": 0.16}, **sections), tmp_path / "a")
    run(tiny_config(digits16, train={"kimg": 0.08}, **sections), tmp_path / "b")
    extended = run(tiny_config(digits16, train={"kimg": 0.16}, **sections), tmp_path / "b", resume="auto")
    mid = tmp_path / "a" / checkpoint.checkpoint_name(80)
    from_path = run(tiny_config(digits16, train={"kimg": 0.16}, **sections), tmp_path / "c", resume=str(mid))
    assert straight["step"] == extended["step"] == from_path["step"] == 10
    final_a = checkpoint.load(straight["checkpoint"])
    for other in (extended, from_path):
        final = checkpoint.load(other["checkpoint"])
        _assert_same_state(final_a, final)
        got, want = _next_batch(final, digits16), _next_batch(final_a, digits16)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert final_a["data"][0]["turn"] == 0 and checkpoint.load(mid)["data"][0]["turn"] == 1


def _train_params(digits16, tmp_path, micro_batch):
    cfg = tiny_config(digits16, model={"norm": "none"}, loss={"r1": {"weight": 0.5, "interval": R1_INTERVAL}},
                      train={"batch": 16, "micro_batch": micro_batch, "ema_kimg": 0.02}, optim={"eps": ADAM_EPS})
    cfg = resolve(cfg, read_manifest(digits16), 1)
    trainer = Trainer(cfg, tmp_path, SingleEngine("cpu"))
    for _ in range(4):
        trainer.train_step()
    trainer.loader.close()
    return trainer


def test_accumulation_equals_one_large_batch(digits16, tmp_path):
    """micro-batch 8 x 2 accumulations == batch 16 (batch norm off: it sees per-micro-batch statistics)."""
    big = _train_params(digits16, tmp_path / "big", 16)
    small = _train_params(digits16, tmp_path / "small", 8)
    assert small.accum == 2 and big.accum == 1
    atol, rtol = tolerance(4)
    for a, b in [(big.G.raw, small.G.raw), (big.D.raw, small.D.raw), (big.G_ema, small.G_ema)]:
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=atol, rtol=rtol), name
    moved = [not torch.equal(p, q) for p, q in zip(big.G_ema.parameters(), big.G.raw.parameters())]
    assert any(moved)  # the EMA is a real average, not a copy


def test_tensorboard_scalars_images_and_run_dir(digits16, tmp_path):
    result = run(tiny_config(digits16, loss={"r1": {"weight": 1.0, "interval": 2}}), tmp_path)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("Loss/D", "Loss/G", "Loss/R1", "GradNorm/Dmain", "GradNorm/Gmain", "GradNorm/Dr1", "LR/G",
                "LR/D", "Progress/kimg", "Timing/img_per_sec", "Timing/sec_per_kimg", "Resources/peak_mem_mb",
                "Data/skipped"):
        assert tag in scalars, tag
    assert [e.step for e in acc.Scalars("Progress/kimg")] == [32, 64, 80]
    hparams = acc.PluginTagToContent("hparams")
    assert b"train.batch" in hparams["_hparams_/session_start_info"]  # the config as hparams
    from tensorboard.plugins.hparams import plugin_data_pb2

    listed = [h.name for h in plugin_data_pb2.HParamsPluginData.FromString(
        hparams["_hparams_/experiment"]).experiment.hparam_infos]
    # only what this run reads (lazy R1 on; no toy problem, other regularizers, progressive, eval, Ray),
    # sections in config order
    assert {"data.path", "loss.r1.weight", "loss.r1.interval", "train.batch", "engine.precision"} <= set(listed)
    assert not [n for n in listed if n.split(".")[0] in ("progressive", "eval", "ray")
                or n.startswith(("data.toy.", "loss.gp.", "loss.r2.", "loss.instance_noise.", "engine.zero_stage"))]
    sections = list(dict.fromkeys(n.split(".")[0] for n in listed))
    assert sections == ["run", "data", "model", "loss", "optim", "train", "log", "engine"]
    assert acc.Scalars("Progress/kimg")[-1].value == pytest.approx(0.08)
    images = {tag: acc.Images(tag) for tag in acc.Tags()["images"]}
    assert set(images) == {"fakes", "reals", "truncation"}
    assert [e.step for e in images["fakes"]] == [e.step for e in images["truncation"]] == [0, 64, 80]
    # enlarged by pixel repetition to about 512 px: an 8 x 8 grid of 16 px cells 4x
    assert images["fakes"][0].width == images["fakes"][0].height == 4 * 8 * 16
    # a row per latent, a column per psi (1 ... 0) under a strip of psi labels; 512 // 80 = 6x
    assert images["truncation"][0].width == 6 * 5 * 16 and 6 * 4 * 16 < images["truncation"][0].height < 6 * 4 * 16 + 30
    for name in ("config.yaml", "log.txt", "stats.jsonl", "reals.png", "latest", "fakes-0000000080.png",
                 "G_ema-0000000080.safetensors"):
        assert (tmp_path / name).exists(), name
    assert "tick 3" in (tmp_path / "log.txt").read_text()
    assert result["scalars"]["Progress/kimg"] == pytest.approx(0.08)


def test_checkpoints_keep_last_n_and_survive_damage(digits16, tmp_path, caplog):
    cfg = tiny_config(digits16, log={"snapshot_kimg": 0.032, "keep": 2})
    run(cfg, tmp_path)
    kept = checkpoint.list_checkpoints(tmp_path)
    assert [p.name for p in kept] == [checkpoint.checkpoint_name(64), checkpoint.checkpoint_name(80)]
    exports = sorted(p.name for p in tmp_path.glob("G_ema-*"))
    assert exports == ["G_ema-0000000064.safetensors", "G_ema-0000000080.safetensors"]
    newest = kept[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # a torn file, as a full disk would leave
    with pytest.raises(CheckpointError, match=newest.name) as info:
        checkpoint.load(newest)
    assert "\n" not in str(info.value)
    path, state = checkpoint.load_latest(tmp_path)
    assert path == kept[0] and state["counters"]["nimg"] == 64
    assert "skipping damaged checkpoint" in caplog.text
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a gantrain checkpoint"):
        checkpoint.load(foreign)
    # Resuming continues from the intact checkpoint and the run completes.
    result = run(tiny_config(digits16, train={"kimg": 0.112}, log={"snapshot_kimg": 0.032, "keep": 2}), tmp_path,
                 resume="auto")
    assert result["nimg"] == 112


def test_fresh_run_refuses_a_run_dir_with_checkpoints(digits16, tmp_path):
    run(tiny_config(digits16, train={"kimg": 0.016}), tmp_path)
    with pytest.raises(Exception, match="--resume auto"):
        run(tiny_config(digits16, train={"kimg": 0.016}), tmp_path)


def test_cli_train_sample_and_one_line_errors(digits16, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{path: {digits16}, workers: 0}}\nmodel: {{z_dim: 16, channels: 8, conditional: true}}\n"
                      "log: {progress: false}\n")
    assert cli_main(["train", str(config), "train.kimg=0.032", "train.batch=16", "--run-dir", str(tmp_path / "r")]) == 0
    ckpt = checkpoint.list_checkpoints(tmp_path / "r")[-1]
    assert cli_main(["sample", str(ckpt), "--out", str(tmp_path / "g.png"), "--n", "20", "--cols", "10"]) == 0
    assert Image.open(tmp_path / "g.png").size == (10 * 16, 2 * 16)
    export = next((tmp_path / "r").glob("G_ema-*.safetensors"))
    assert cli_main(["sample", str(export), "--out", str(tmp_path / "h.png"), "--n", "4", "--class", "3"]) == 0
    assert Image.open(tmp_path / "h.png").size == (2 * 16, 2 * 16)
    capsys.readouterr()

    bad = [
        (["train", str(config), "train.kimgg=1"], "train.kimgg"),
        (["train", str(config), "--resume", str(tmp_path / "missing.pt"), "--run-dir", str(tmp_path / "x")],
         "missing.pt"),
        (["train", str(config), "data.path=" + str(tmp_path), "--run-dir", str(tmp_path / "y")], "manifest.json"),
        (["sample", str(ckpt), "--out", str(tmp_path / "t.png"), "--class", "12"], "--class"),
        (["pack", "nonexistent-dir", str(tmp_path / "p"), "--resolution", "8"], "nonexistent-dir"),
    ]
    for argv, culprit in bad:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and culprit in err, err


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(digits16, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{path: {digits16}, workers: 1}}\nmodel: {{z_dim: 16, channels: 8}}\n"
                      "train: {kimg: 1000, batch: 16}\nlog: {progress: false, tick_kimg: 0.016}\n")
    run_dir = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", "train", str(config), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run_dir / "stats.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stop requested" in out and "--resume auto" in out
    state = checkpoint.load(run_dir / (run_dir / "latest").read_text().strip())
    assert 0 < state["counters"]["nimg"] < 1_000_000


def test_d_steps_per_g_step(digits16, tmp_path):
    cfg = resolve(tiny_config(digits16, train={"d_steps": 3}), read_manifest(digits16), 1)
    trainer = Trainer(cfg, tmp_path, SingleEngine("cpu"))
    changed = []
    for _ in range(6):
        g_before = [p.clone() for p in trainer.G.raw.parameters()]
        d_before = [p.clone() for p in trainer.D.raw.parameters()]
        trainer.train_step()
        changed.append((any(not torch.equal(a, b) for a, b in zip(g_before, trainer.G.raw.parameters())),
                        any(not torch.equal(a, b) for a, b in zip(d_before, trainer.D.raw.parameters()))))
    trainer.loader.close()
    assert changed == [(False, True), (False, True), (True, True)] * 2
    assert trainer.g_step == 2 and trainer.nimg == 6 * 16


def test_lr_scaling_and_lazy_r1_reach_the_optimizers(digits16, tmp_path):
    cfg = tiny_config(digits16, optim={"lr_scaling": "linear", "base_batch": 8, "g_lr": 1e-3, "d_lr": 1e-3},
                      loss={"r1": {"weight": 1.0, "interval": 4}})
    trainer = Trainer(resolve(cfg, read_manifest(digits16), 1), tmp_path, SingleEngine("cpu"))
    trainer.loader.close()
    assert trainer.G.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)
    d_group = trainer.D.optimizer.param_groups[0]  # lazy R1 every 4 steps: lr and betas ** (4/5)
    assert d_group["lr"] == pytest.approx(2e-3 * 0.8)
    assert d_group["betas"] == pytest.approx((0.5 ** 0.8, 0.999 ** 0.8))


def test_a_stop_right_after_a_snapshot_checkpoints_once(digits16, tmp_path):
    """A stop request that lands on the step a snapshot was just written at: no second checkpoint of the
    same step, and the host hears of it once. (Ray Train was told of checkpoint-...64 twice and then
    lost it: it deletes the older report of a directory, which was the same one.)"""
    from gantrain.train.loop import Host

    class StopAfterTheFirstCheckpoint(Host):
        def __init__(self):
            self.heard = []

        def checkpointed(self, path, nimg, scalars):
            self.heard.append((path.name if path else None, nimg))

        def stop_requested(self):
            return bool(self.heard)

    host = StopAfterTheFirstCheckpoint()
    result = run(tiny_config(digits16, train={"kimg": 0.16}, log={"snapshot_kimg": 0.048}), tmp_path, host=host)
    assert result["interrupted"] and result["nimg"] == 48
    assert host.heard == [(checkpoint.checkpoint_name(48), 48)]
    assert result["checkpoint"].name == checkpoint.checkpoint_name(48)


def test_config_changes_on_resume_tell_edits_from_settings_a_newer_version_added():
    from gantrain.train.loop import _config_changes

    added: list[str] = []
    old = {"train": {"kimg": 10}, "data": {"path": "d"}}
    new = {"train": {"kimg": 20}, "data": {"path": "d", "prefetch": 2}}
    assert _config_changes(old, new, added=added) == ["train.kimg: 10 -> 20"]
    assert added == ["data.prefetch=2"]
