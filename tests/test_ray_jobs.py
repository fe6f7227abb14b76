"""Ray Jobs: `gantrain submit` / `gantrain jobs` against a `ray start --head` cluster on 127.0.0.1 with token
authentication. A separate module from the Ray Train tests, so their local Ray instance is gone by now."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_config
from gantrain import config as config_mod
from gantrain.train import checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent


def _cfg(digits16, **sections):
    base = {"engine": {"name": "single"}, "model": {"norm": "none"}, "train": {"kimg": 0.32},
            "log": {"snapshot_kimg": 0.064, "keep": 2}}
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return tiny_config(digits16, **base)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 with token authentication; stopped at the end."""
    tmp = tmp_path_factory.mktemp("head")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    # the cluster's `python` is this environment's, with gantrain installed, as on a real cluster's nodes
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "PATH": path}
    port, dash, agent = _free_port(), _free_port(), _free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
                    "--num-cpus=2",
                    f"--temp-dir={tmp / 'ray'}", "--disable-usage-stats"], check=True, env=env, capture_output=True,
                   timeout=120)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _gantrain(*args, env, timeout=300, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "gantrain", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


def test_submit_a_job_and_read_its_status_and_logs(head, digits16, tmp_path):
    address, env = head
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.yaml").write_text(config_mod.dump(_cfg(digits16, engine={"name": "single"}, train={"kimg": 0.064})))
    result = _gantrain("submit", "job.yaml", "log.snapshot_kimg=0.032", "--address", address, "--run-dir",
                       str(tmp_path / "run"), "--wait", env=env, cwd=work)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    job_id = result.stdout.splitlines()[0].strip()
    assert "run dir:" in result.stdout and "SUCCEEDED" in result.stderr
    assert checkpoint.list_checkpoints(tmp_path / "run")[-1].name == checkpoint.checkpoint_name(64)
    status = _gantrain("jobs", "status", job_id, "--address", address, env=env)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = _gantrain("jobs", "logs", job_id, "--address", address, env=env)
    assert logs.returncode == 0 and "kimg: 0.06" in logs.stdout
    # no credentials anywhere gantrain wrote
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text()
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".txt", ".jsonl"):
            assert token not in path.read_text()

    # a long job can be stopped
    result = _gantrain("submit", "job.yaml", "train.kimg=1000", "--address", address, "--run-dir",
                       str(tmp_path / "long"), env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert _gantrain("jobs", "stop", job_id, "--address", address, env=env).returncode == 0
    for _ in range(60):
        status = _gantrain("jobs", "status", job_id, "--address", address, env=env).stdout
        if "STOPPED" in status:
            break
        time.sleep(1)
    assert "STOPPED" in status


def test_job_errors_are_clear(head, digits16, tmp_path):
    address, env = head
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.yaml").write_text(config_mod.dump(_cfg(digits16, engine={"name": "single"})))
    cases = [
        (["submit", "job.yaml", "--address", "http://127.0.0.1:1"], "cannot reach"),  # nothing listens there
        (["submit", "job.yaml", "train.kimgg=1", "--address", address], "train.kimgg"),  # caught before submitting
        (["jobs", "status", "raysubmit_nonexistent", "--address", address], "no such job"),
    ]
    for args, words in cases:
        result = _gantrain(*args, env=env, cwd=work)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr
    # the wrong token: refused, and said so
    wrong = {**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "other")}
    (tmp_path / "other").write_text(secrets.token_hex(32))
    result = _gantrain("jobs", "status", "raysubmit_x", "--address", address, env=wrong, cwd=work)
    assert result.returncode == 2 and "token" in result.stderr.lower(), result.stderr
    # the right token file without RAY_AUTH_MODE=token: Ray's client sends nothing; the error names both variables
    no_mode = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    result = _gantrain("jobs", "status", "raysubmit_x", "--address", address, env=no_mode, cwd=work)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "RAY_AUTH_MODE=token" in result.stderr and "RAY_AUTH_TOKEN_PATH" in result.stderr
    assert "RAY_AUTH_MODE is unset here" in result.stderr
    # a config that only fails on the cluster (its data is missing there): the job fails, submit --wait exits 1
    result = _gantrain("submit", "job.yaml", f"data.path={tmp_path / 'nowhere'}", "--address", address, "--wait",
                       "--run-dir", str(tmp_path / "bad"), env=env, cwd=work)
    assert result.returncode == 1 and "FAILED" in result.stderr and "manifest.json" in result.stdout
