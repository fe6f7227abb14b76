"""Ray Train on a local Ray instance (2 CPU workers): real TorchTrainer runs
with the DDP and DeepSpeed engines, a worker SIGKILLed or SIGTERMed mid-run (Ray Jobs: test_ray_jobs.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
import torch

from conftest import tiny_config
from gantrain import config as config_mod
from gantrain.atomic import sha256_file
from gantrain.train import checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def local_ray():
    """The local Ray instance gantrain starts without --address, shared by the module."""
    from gantrain.ray_train import init_ray

    init_ray(None, num_cpus=4)
    assert len(ray.nodes()) == 1
    with pytest.raises(ConnectionRefusedError):  # no dashboard / Jobs API was started
        socket.create_connection(("127.0.0.1", 8265), timeout=2).close()
    yield
    ray.shutdown()


def _cfg(digits16, **sections):
    # no batch norm: per-rank batch statistics would make 2 workers differ from one process
    base = {"engine": {"name": "ddp"}, "model": {"norm": "none"}, "train": {"kimg": 0.32},
            "log": {"snapshot_kimg": 0.064, "keep": 2}}
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return tiny_config(digits16, **base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.load(path)
    return {f"{net}.{k}": v for net in ("G_ema",) for k, v in state[net].items()} | \
        {f"G.{k}": v for k, v in state["G"]["model"].items()} | {f"D.{k}": v for k, v in state["D"]["model"].items()}


def _train(cfg, run_dir, **kwargs):
    from gantrain.ray_train import train_on_ray

    return train_on_ray(cfg, run_dir, workers=2, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(local_ray, digits16, tmp_path_factory):
    """A 2-worker DDP run under Ray Train, start to end: 20 steps, a checkpoint every 4."""
    cfg = _cfg(digits16)
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    return cfg, run_dir, _train(cfg, run_dir)


def test_two_workers_ddp_train_report_and_write_tensorboard(uninterrupted, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, run_dir, result = uninterrupted
    assert result["metrics"]["nimg"] == 320
    final = checkpoint.list_checkpoints(run_dir)[-1]
    assert final.name == checkpoint.checkpoint_name(320)
    reported = sorted(Path(result["storage"], result["name"]).glob("checkpoint-*/checkpoint-*.pt"))
    assert [p.name for p in reported][-1] == final.name and len(reported) == 2  # ray keeps log.keep of them
    assert sha256_file(reported[-1]) == sha256_file(final)  # Ray holds the very file gantrain wrote
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"Loss/D", "Loss/G", "Timing/img_per_sec"} <= set(acc.Tags()["scalars"])
    # two Ray workers == the same run under torchrun (same data split, same gloo all-reduce): Ray's process
    # group and environment are the real thing
    path = tmp_path / "c.yaml"
    path.write_text(config_mod.dump(cfg))
    result = subprocess.run([sys.executable, "-m", "gantrain", "train", str(path), "--nproc", "2", "--run-dir",
                             str(tmp_path / "torchrun")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    reference = _weights(checkpoint.list_checkpoints(tmp_path / "torchrun")[-1])
    for key, value in _weights(final).items():
        assert torch.allclose(value, reference[key], atol=1e-6, rtol=1e-5), key


def test_two_workers_deepspeed_zero2(local_ray, digits16, tmp_path):
    cfg = _cfg(digits16, engine={"name": "deepspeed", "zero_stage": 2}, train={"kimg": 0.128},
               log={"snapshot_kimg": 0.128})
    result = _train(cfg, tmp_path / "run")
    assert result["metrics"]["nimg"] == 128
    assert (tmp_path / "run" / "tb").is_dir() and checkpoint.list_checkpoints(tmp_path / "run")


def _worker_pids(since: float) -> list[int]:
    """Ray Train worker processes started after SINCE (an earlier run's may still be shutting down)."""
    return [p.pid for p in psutil.process_iter(["cmdline", "create_time"])
            if p.info["create_time"] >= since and any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_worker_restarts_the_group_from_the_last_checkpoint(uninterrupted, tmp_path, sig):
    """SIGKILL: the worker dies with no warning; Ray restarts the group from the last reported checkpoint.
    SIGTERM (a preempted or drained node): every rank checkpoints first, then the group restarts from it."""
    cfg, reference_dir, _ = uninterrupted
    reference_final = checkpoint.list_checkpoints(reference_dir)[-1]
    cfg = config_mod.from_dict({**cfg.to_dict(), "ray": {"max_failures": 1}})
    run_dir = tmp_path / "run"
    outcome: dict = {}

    def fit():
        try:
            outcome["result"] = _train(cfg, run_dir)
        except BaseException as exc:  # surfaced by the assertions below
            outcome["error"] = exc

    started = time.time() - 1
    thread = threading.Thread(target=fit)
    thread.start()
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and thread.is_alive():
        # after the first reported checkpoint, and before the run is over: kill one worker process outright
        reported = list((run_dir / "ray").glob("*/checkpoint-*/checkpoint-*.pt"))
        pids = _worker_pids(started)
        if reported and len(pids) == 2:
            killed = pids[-1]
            os.kill(killed, sig)
            break
        time.sleep(0.05)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None, "the run ended before a worker could be killed"
    assert outcome["result"]["metrics"]["nimg"] == 320
    log = (run_dir / "log.txt").read_text()
    assert "resuming from" in log  # the restarted group resumed from the reported checkpoint
    if sig == signal.SIGTERM:
        assert "stop requested" in log and "checkpointing and stopping" in log
    for path in checkpoint.list_checkpoints(run_dir):
        checkpoint.load(path)  # none is torn
    final = checkpoint.list_checkpoints(run_dir)[-1]
    assert final.name == reference_final.name
    # resume is exact at a fixed world size, so the killed-and-restarted run ends where the uninterrupted one did
    reference = _weights(reference_final)
    for key, value in _weights(final).items():
        assert torch.equal(value, reference[key]), key


def test_a_reused_ray_name_is_refused_without_resume(local_ray, digits16, tmp_path):
    cfg = _cfg(digits16, ray={"name": "fixed", "storage_path": str(tmp_path / "storage")})
    (tmp_path / "storage" / "fixed").mkdir(parents=True)
    with pytest.raises(config_mod.ConfigError, match="ray.name"):
        _train(cfg, tmp_path / "run")
    from gantrain.ray_train import unique_name

    assert unique_name(tmp_path / "run") != unique_name(tmp_path / "run")


def test_the_readme_ray_example_as_written_with_the_quickstarts_relative_paths(local_ray, tmp_path, monkeypatch,
                                                                               capfd):
    """`gantrain train configs/quickstart.yaml engine.name=ddp --ray --workers 2`, from a directory holding the
    quickstart's relative data.path, eval.extractor_path and eval.cache_dir: Ray's workers run elsewhere, so
    the driver hands them those paths (and the run dir) resolved against its own working directory."""
    import shutil

    from gantrain.cli import main as cli_main
    from gantrain.data.pack import pack
    from gantrain.data.sources import open_source

    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "quickstart.yaml", tmp_path / "configs")
    pack(open_source("digits"), tmp_path / "data" / "mnist5k-32", 32, shard_size=200, progress=False)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["eval", "train-classifier", "data/mnist5k-32", "--out",
                     "data/mnist5k-32-classifier.safetensors", "--epochs", "1"]) == 0
    # the command, at test scale; 64 samples in one eval batch: rank 1 has no share of the fakes to embed
    small = ["train.kimg=0.128", "eval.num_samples=64", "eval.num_real=128"]
    assert cli_main(["train", "configs/quickstart.yaml", "engine.name=ddp", *small, "--ray", "--workers", "2"]) == 0
    out, err = capfd.readouterr()
    assert "finished: kimg 0.13" in out
    # the local instance has no State API: Ray Train's cleaner's once-a-second complaint about it is dropped
    assert "Failed to query Ray Train Controller actor state" not in out + err
    run_dir = tmp_path / "runs" / "quickstart"
    assert checkpoint.list_checkpoints(run_dir)[-1].name == checkpoint.checkpoint_name(128)
    assert "Metrics/fid" in (run_dir / "metrics.jsonl").read_text()
    assert list((tmp_path / "data" / "cache" / "reference").glob("*.safetensors"))  # the relative cache_dir
    saved = config_mod.load(run_dir / "config.yaml")
    assert saved.data.path == str(tmp_path / "data" / "mnist5k-32")
    assert saved.eval.extractor_path == str(tmp_path / "data" / "mnist5k-32-classifier.safetensors")


def test_sigterm_to_the_driver_checkpoints_on_every_worker_and_ends_the_run_cleanly(uninterrupted, tmp_path):
    """What a scheduler, `timeout` or `gantrain jobs stop` does to a `gantrain train --ray` driver: the workers
    checkpoint and stop, the run ends as finished-but-interrupted (no restart by Ray), and --resume auto
    continues it to the very weights of the uninterrupted run."""
    cfg, reference_dir, _ = uninterrupted
    run_dir = tmp_path / "run"
    sent = threading.Event()

    def stop_after_first_checkpoint():
        deadline = time.time() + 240
        while time.time() < deadline and not list((run_dir / "ray").glob("*/checkpoint-*/checkpoint-*.pt")):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # the driver is this process, fit() runs on its main thread
        sent.set()

    before = signal.getsignal(signal.SIGTERM)  # Ray's driver handler
    threading.Thread(target=stop_after_first_checkpoint, daemon=True).start()
    result = _train(cfg, run_dir)
    assert sent.is_set() and result["interrupted"]
    stopped_at = result["metrics"]["nimg"]
    assert 0 < stopped_at < 320
    assert signal.getsignal(signal.SIGTERM) is before  # gantrain's stop handler is gone after the run
    log = (run_dir / "log.txt").read_text()
    assert "stop requested" in log and "checkpointing and stopping" in log and "resuming from" not in log
    assert checkpoint.list_checkpoints(run_dir)[-1].name == checkpoint.checkpoint_name(stopped_at)

    result = _train(cfg, run_dir, resume="auto")
    assert not result["interrupted"] and result["metrics"]["nimg"] == 320
    reference = _weights(checkpoint.list_checkpoints(reference_dir)[-1])
    for key, value in _weights(checkpoint.list_checkpoints(run_dir)[-1]).items():
        assert torch.equal(value, reference[key]), key
