"""The CUDA variants of the engine, precision and checkpoint tests (scripts/gpu_check.sh runs them).

All are `gpu`-marked: skipped without CUDA, except under GANTRAIN_TEST_DEVICE=cpu, where they run on CPU
(the check's dry run, so CI keeps them working). Data: random images packed into shards here, so the
check needs neither scikit-learn nor a data set on the GPU machine.

Tolerances: run.deterministic (the default) selects deterministic CUDA kernels, so resume on the GPU must
be bit-exact, as on CPU. A checkpoint moved between devices continues, but not bit-exactly: the same
float32 step rounds differently in CPU and GPU kernels, so that test checks continuation, not equality.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from gantrain.data.pack import pack
from gantrain.data.sources import open_source
from gantrain.data.stream import read_manifest
from gantrain.engines.single import SingleEngine
from gantrain.train import checkpoint
from gantrain.train.loop import Trainer, resolve, run
from test_distributed import _assert_equal_nets

pytestmark = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else os.environ.get("GANTRAIN_TEST_DEVICE", "cpu")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def random16(tmp_path_factory) -> Path:
    """64 random 16x16 RGB images in 10 classes, packed into 4 shards."""
    root = tmp_path_factory.mktemp("random16")
    rng = np.random.default_rng(0)
    np.savez(root / "random.npz", images=rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8),
             labels=np.arange(64) % 10)
    pack(open_source(str(root / "random.npz")), root / "data", 16, shard_size=16, progress=False)
    return root / "data"


def _cfg(path: Path, device: str = DEVICE, **sections):
    sections["engine"] = {"device": device, **sections.get("engine", {})}
    return tiny_config(path, **sections)


def test_training_on_the_device_resumes_bit_exactly_and_moves_to_cpu_and_back(random16, tmp_path):
    """Lazy R1 and EMA on the device: 6 steps == 3, stop, resume, 3 more (bit-exact under deterministic
    kernels); that checkpoint continues on CPU, and the CPU's continues on the device."""
    sections = dict(loss={"r1": {"weight": 1.0, "interval": 2}}, log={"snapshot_kimg": 0.048})
    straight = run(_cfg(random16, train={"kimg": 0.096}, **sections), tmp_path / "a")
    run(_cfg(random16, train={"kimg": 0.048}, **sections), tmp_path / "b")
    resumed = run(_cfg(random16, train={"kimg": 0.096}, **sections), tmp_path / "b", resume="auto")
    _assert_equal_nets(checkpoint.load(straight["checkpoint"]), checkpoint.load(resumed["checkpoint"]))
    on_cpu = run(_cfg(random16, "cpu", train={"kimg": 0.128}, **sections), tmp_path / "b", resume="auto")
    back = run(_cfg(random16, train={"kimg": 0.16}, **sections), tmp_path / "b", resume="auto")
    final = checkpoint.load(back["checkpoint"])
    assert (on_cpu["step"], back["step"]) == (8, 10)
    steps = {float(s["step"]) for s in final["G"]["optimizer"]["state"].values()}
    assert steps == {10.0}  # Adam's state went to CPU and back
    assert all(torch.isfinite(t).all() for t in final["G"]["model"].values() if t.is_floating_point())
    moved = checkpoint.load(on_cpu["checkpoint"])["G"]["model"]
    assert any(not torch.equal(t, moved[k]) for k, t in final["G"]["model"].items() if t.is_floating_point())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_stylegan2_mixed_precision_with_r1_path_length_and_per_network_scalers(random16, tmp_path, precision):
    """The reference's mixed precision: the top 2 resolutions in fp16/bf16 with conv_clamp, R1 and path
    length (lazy, every 2 steps) through the loss scale; fp16 keeps one dynamic scaler per network."""
    cfg = _cfg(random16, engine={"precision": precision},
               model={"name": "stylegan2", "channel_base": 256, "max_channels": 32, "z_dim": 32, "w_dim": 32,
                      "mapping_layers": 2, "num_fp16_res": 2, "conv_clamp": 256},
               loss={"r1": {"weight": 1.0, "interval": 2}, "pl": {"weight": 2.0, "interval": 2, "batch_shrink": 2}},
               train={"kimg": 0.064, "batch": 8})
    result = run(cfg, tmp_path)
    scalars = result["scalars"]
    assert {"Loss/R1", "Loss/PL"} <= set(scalars)
    assert all(math.isfinite(v) for k, v in scalars.items() if k.startswith("Loss/"))
    assert scalars["Skipped/Gmain"] < 1 and scalars["Skipped/Dmain"] < 1  # the scalers settle, steps apply
    state = checkpoint.load(result["checkpoint"])
    for net in ("G", "D"):
        assert bool(state[net]["scaler"]) == (precision == "fp16"), net
        if precision == "fp16":
            assert state[net]["scaler"]["scale"] > 0
        assert all(torch.isfinite(t).all() for t in state[net]["model"].values() if t.is_floating_point())


def test_ada_and_class_conditioning_under_deterministic_kernels(random16, tmp_path):
    """ADA's geometric ops (no deterministic grid_sample / reflection-pad backward in CUDA: gantrain
    gathers instead), R1 through augmented reals, AC-GAN's cross entropy and the projection head."""
    for conditioning in ("acgan", "projection"):
        cfg = _cfg(random16, model={"conditional": True, "conditioning": conditioning},
                   augment={"name": "ada", "pipe": "bgc", "p": 0.5, "target": 0.6, "interval": 1},
                   loss={"r1": {"weight": 1.0, "interval": 2}}, train={"kimg": 0.048})
        assert cfg.run.deterministic
        result = run(cfg, tmp_path / conditioning)
        assert all(math.isfinite(v) for k, v in result["scalars"].items() if k.startswith("Loss/"))
        assert checkpoint.load(result["checkpoint"])["augment"]["p"] != 0.5  # 3 adjustments: an odd count


def test_progan_through_a_fade_with_wgan_gp_in_bf16(random16, tmp_path):
    """The CelebA-HQ preset's recipe (bf16, WGAN-GP, drift, minibatch stddev) through 4x4 -> 8x8 fade."""
    cfg = _cfg(random16, engine={"precision": "bf16"},
               model={"name": "progan", "minibatch": "stddev", "norm": "none"},
               loss={"name": "wgan-gp", "gp": {"weight": 10.0, "interval": 1}, "drift": {"weight": 0.001}},
               progressive={"enabled": True, "stabilize_kimg": 0.016, "fade_kimg": 0.032},
               train={"kimg": 0.064})
    result = run(cfg, tmp_path)
    assert result["scalars"]["Progress/resolution"] == 8
    assert all(math.isfinite(v) for k, v in result["scalars"].items() if k.startswith("Loss/"))


def test_batches_come_pinned_on_a_gpu(random16, tmp_path):
    """Pinned host memory (async copies) when the device is a GPU, pageable on CPU."""
    cfg = _cfg(random16, data={"workers": 1})
    cfg = resolve(cfg, read_manifest(random16), 1)
    trainer = Trainer(cfg, tmp_path, SingleEngine(DEVICE))
    try:
        images, _ = next(trainer.loader)
        assert images.is_pinned() == (DEVICE == "cuda")
    finally:
        trainer.loader.close()


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "gantrain", *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _config_file(tmp_path: Path, data: Path) -> Path:
    config = tmp_path / "gpu.yaml"
    config.write_text(f"data: {{path: {data}, workers: 1}}\nmodel: {{z_dim: 16, channels: 8}}\n"
                      f"engine: {{device: {DEVICE}}}\ntrain: {{batch: 16, ema_kimg: 0.05}}\n"
                      "loss: {r1: {weight: 1.0, interval: 2}}\n"
                      "log: {progress: false, tick_kimg: 0.032, snapshot_kimg: 0.032}\n")
    return config


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
@pytest.mark.parametrize("stage", [1, 2] if torch.cuda.is_available() else [2])  # the dry run: one is enough
def test_deepspeed_zero_at_world_size_one_and_back_to_the_single_engine(random16, tmp_path, stage):
    """ZeRO-1/2 through the launcher at world size 1 (NCCL on a GPU, gloo on CPU); its checkpoint
    continues under the single engine."""
    config = _config_file(tmp_path, random16)
    _cli("train", str(config), "train.kimg=0.064", "engine.name=deepspeed", f"engine.zero_stage={stage}",
         "--nproc", "1", "--run-dir", str(tmp_path / "run"))
    _cli("train", str(config), "train.kimg=0.096", "engine.name=single", "--resume", "auto",
         "--run-dir", str(tmp_path / "run"))
    state = checkpoint.load(tmp_path / "run" / (tmp_path / "run" / "latest").read_text().strip())
    assert state["counters"]["nimg"] == 96
    assert {float(s["step"]) for s in state["G"]["optimizer"]["state"].values()} == {6.0}  # Adam's state carried


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("accelerate") is None,
                    reason="launch/accelerate.sh starts GPU processes (--multi_gpu) and needs accelerate")
def test_the_accelerate_launcher_runs_the_ddp_engine(random16, tmp_path):
    config = _config_file(tmp_path, random16)
    result = subprocess.run([str(REPO / "launch" / "accelerate.sh"), str(config), "train.kimg=0.032",
                             "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                            cwd=REPO, env=dict(os.environ, NUM_PROCESSES="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "run" / "latest").exists()
