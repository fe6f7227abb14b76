"""Stop signals as schedulers send them, with real processes and real DataLoader workers.

`timeout`, Slurm, Kubernetes and systemd signal the whole process group (launcher, torchrun, ranks, data
workers); a user or a wrapper signals the launcher alone. Either way: the ranks checkpoint once, every
process exits 0, and `--resume auto` continues bit-exactly to the same weights as an uninterrupted run.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from gantrain.train import checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
REPO = Path(__file__).resolve().parent.parent
TOTAL_KIMG = 0.8  # what the resumed runs and the uninterrupted one train to: 50 steps of 16


def _config(tmp_path: Path, data: Path) -> Path:
    config = tmp_path / "stop.yaml"
    # Ticks every step (so the test sees progress at once), no periodic snapshot: the stop writes the only one.
    config.write_text(f"data: {{path: {data}, workers: 1}}\nmodel: {{z_dim: 16, channels: 8}}\n"
                      "engine: {device: cpu}\ntrain: {batch: 16, ema_kimg: 0.05}\n"
                      "log: {progress: false, tick_kimg: 0.016, image_kimg: 1000, snapshot_kimg: 1000, keep: 10}\n")
    return config


def _command(config: Path, run_dir: Path, nproc: int, kimg: float, resume: bool = False) -> list[str]:
    engine = ["--nproc", str(nproc)] if nproc > 1 else []  # --nproc 2 implies engine.name=ddp
    return [sys.executable, "-m", "gantrain", "train", str(config), f"train.kimg={kimg}", *engine,
            "--run-dir", str(run_dir), *(["--resume", "auto"] if resume else [])]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _interrupt(command: list[str], run_dir: Path, to_group: bool) -> tuple[int, str]:
    """Start COMMAND in its own process group, wait for training (and its data workers), then SIGTERM."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        stats = run_dir / "stats.jsonl"
        if stats.exists() and stats.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    below = psutil.Process(proc.pid).children(recursive=True)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    if to_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert not [p for p in below if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "orphaned processes"
    return proc.returncode, out


def _nets(run_dir: Path) -> dict:
    return checkpoint.load(run_dir / (run_dir / "latest").read_text().strip())


def _assert_same(a: dict, b: dict) -> None:
    assert a["counters"]["nimg"] == b["counters"]["nimg"] == round(TOTAL_KIMG * 1000)
    for net in ("G", "D"):
        for name, tensor in a[net]["model"].items():
            assert torch.equal(tensor, b[net]["model"][name]), f"{net}.{name}"
    for name, tensor in a["G_ema"].items():
        assert torch.equal(tensor, b["G_ema"][name]), f"G_ema.{name}"


@pytest.fixture(scope="module")
def straight(digits16, tmp_path_factory):
    """Uninterrupted runs to TOTAL_KIMG, one per world size, shared by the signal variants."""
    out = {}
    for nproc in (1, 2):
        tmp = tmp_path_factory.mktemp(f"straight{nproc}")
        _run(_command(_config(tmp, digits16), tmp / "run", nproc, TOTAL_KIMG))
        out[nproc] = _nets(tmp / "run")
    return out


@pytest.mark.parametrize("nproc,to_group", [(2, False), (2, True), (1, True)],
                         ids=["nproc2-launcher", "nproc2-group", "single-group"])
def test_sigterm_checkpoints_once_exits_zero_and_resumes_exactly(digits16, tmp_path, straight, nproc, to_group):
    config, run_dir = _config(tmp_path, digits16), tmp_path / "run"
    rc, out = _interrupt(_command(config, run_dir, nproc, 1000), run_dir, to_group)
    assert rc == 0, out[-3000:]
    assert "Traceback" not in out and "killed by signal" not in out, out[-3000:]
    assert len(checkpoint.list_checkpoints(run_dir)) == 1, out[-3000:]
    stopped = _nets(run_dir)["counters"]["nimg"]
    assert 0 < stopped < round(TOTAL_KIMG * 1000), f"stopped at {stopped} images: signal came too late"
    _run(_command(config, run_dir, nproc, TOTAL_KIMG, resume=True))
    _assert_same(straight[nproc], _nets(run_dir))
