"""`gantrain submit` and `gantrain jobs`: run gantrain as a job on a Ray cluster through the Ray Jobs API.

The job's entrypoint is `python -m gantrain train ...` with the config and overrides given here, run from
the uploaded working directory (runtime_env.working_dir). The config is loaded and validated locally
first, so a bad key fails here, not minutes later on the cluster. Clusters with token authentication
(RAY_AUTH_MODE=token) need the token in RAY_AUTH_TOKEN or the file RAY_AUTH_TOKEN_PATH names; it is
read by Ray's client and never printed or written by gantrain.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from gantrain import config as config_mod

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 120  # how long `submit` waits for a freshly started cluster's job agent
EXCLUDES = ["runs/", "data/", ".venv/", ".git/", "*.pt", "*.safetensors", "__pycache__/"]


class JobsError(RuntimeError):
    """A Ray Jobs problem (unreachable address, refused credentials, unknown job); one line."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _explain(address: str, what: str, exc: BaseException) -> JobsError:
    reason = _first_line(exc)
    lowered = reason.lower()
    if "auth" in lowered or "token" in lowered or "401" in reason or "403" in reason:
        mode = os.environ.get("RAY_AUTH_MODE")
        missing = "" if mode == "token" else \
            f" (RAY_AUTH_MODE is {'unset' if mode is None else repr(mode)} here: without it no token is sent)"
        return JobsError(f"--address {address}: the cluster refused the request ({reason}); it uses token "
                         "authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (the token) or "
                         f"RAY_AUTH_TOKEN_PATH (a file holding it){missing}")
    if "does not exist" in lowered or "404" in reason:
        return JobsError(f"{what}: no such job on {address}")
    if isinstance(exc, ConnectionError) or "connect" in lowered:
        return JobsError(f"--address {address}: cannot reach a Ray Jobs API there ({reason})")
    return JobsError(f"{what} on {address} failed: {reason}")


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, ValueError (bad scheme), RuntimeError (auth) ...
        raise _explain(address, "connect", exc) from None


def _call(address: str, what: str, fn, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise _explain(address, what, exc) from None


def build_runtime_env(runtime_env_file: str | None, requirements: str | None) -> dict[str, Any]:
    if runtime_env_file:
        try:
            env = yaml.safe_load(Path(runtime_env_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise JobsError(f"--runtime-env {runtime_env_file}: {_first_line(exc)}") from None
        if not isinstance(env, dict):
            raise JobsError(f"--runtime-env {runtime_env_file}: must be a mapping")
    else:
        env = {"working_dir": ".", "excludes": list(EXCLUDES)}
    if requirements:
        path = Path(requirements)
        if not path.is_file():
            raise JobsError(f"--requirements {requirements}: not found")
        env["pip"] = [line.strip() for line in path.read_text().splitlines()
                      if line.strip() and not line.startswith("#")]
    return env


def entrypoint(config: str, overrides: list[str], *, run_dir: str | None, workers: int, gpus_per_worker: float,
               cpus_per_worker: float, resume: str | None, python: str = "python") -> str:
    args = [python, "-m", "gantrain", "train", config, *overrides]
    if run_dir:
        args += ["--run-dir", run_dir]
    if workers > 0:  # under Ray Train, on the cluster the job runs in
        args += ["--ray", "--workers", str(workers), "--gpus-per-worker", f"{gpus_per_worker:g}",
                 "--cpus-per-worker", f"{cpus_per_worker:g}", "--address", "auto"]
    if resume:
        args += ["--resume", resume]
    return shlex.join(args)


def uploaded(path: Path, working_dir: Path, excludes: list[str]) -> bool:
    """Whether PATH (absolute) travels with the job: inside WORKING_DIR and not matched by EXCLUDES
    (gitignore-style as Ray reads them: "dir/" excludes a directory anywhere, other patterns match names)."""
    if not path.is_relative_to(working_dir):
        return False
    parts = path.relative_to(working_dir).parts
    for pattern in excludes:
        if pattern.endswith("/"):
            if any(fnmatch.fnmatch(part, pattern.rstrip("/")) for part in parts[:-1] if part) or \
                    (path.is_dir() and parts and fnmatch.fnmatch(parts[-1], pattern.rstrip("/"))):
                return False
        elif any(fnmatch.fnmatch(part, pattern) for part in parts) or fnmatch.fnmatch("/".join(parts), pattern):
            return False
    return True


def job_paths(cfg: config_mod.Config, run_dir: str, working_dir: Path | None,
              excludes: list[str]) -> tuple[list[str], str, list[str]]:
    """Overrides that make the config's relative paths (meant from this directory) right for the job, which
    runs in the uploaded copy of WORKING_DIR: a path that travels with the upload becomes relative to it; one
    that does not (excluded, outside it, or no upload) becomes absolute and must exist on the cluster's nodes
    (a local cluster, a shared filesystem). The run dir is always absolute: the job's copy of the working
    directory is temporary. Returns (overrides, run dir, notes)."""
    overrides, notes = [], []
    for key, value in config_mod.relative_paths(cfg).items():
        target = (Path.cwd() / value).resolve()
        if working_dir is not None and uploaded(target, working_dir, excludes):
            overrides.append(f"{key}={target.relative_to(working_dir)}")
        else:
            overrides.append(f"{key}={target}")
            notes.append(f"{key}: {value} is not uploaded with the job; it reads {target}, which must exist on "
                         "the cluster's nodes")
    return overrides, str(Path(run_dir).resolve()), notes


def submit(config: str, overrides: list[str], address: str, *, runtime_env_file: str | None = None,
           requirements: str | None = None, run_dir: str | None = None, workers: int = 0,
           gpus_per_worker: float = 0, cpus_per_worker: float = 1, resume: str | None = None,
           job_id: str | None = None) -> tuple[Any, str]:
    """Validate CONFIG locally, submit it; returns (client, job id). Relative paths in the config and the
    run dir mean what they mean in this directory (see job_paths); notes about them go to stderr."""
    cfg = config_mod.load(config, overrides)  # a bad config is a one-line ConfigError here, before submitting
    env = build_runtime_env(runtime_env_file, requirements)
    working_dir = Path(env["working_dir"]).resolve() if "working_dir" in env else None
    config_path = Path(config).resolve()
    if working_dir is not None:
        if not config_path.is_relative_to(working_dir):
            raise JobsError(f"{config}: not inside the uploaded working_dir {working_dir}; the job could not read it")
        config = str(config_path.relative_to(working_dir))
    paths, run_dir, notes = job_paths(cfg, run_dir or str(Path("runs") / config_path.stem), working_dir,
                                      list(env.get("excludes", [])))
    for note in notes:
        print(f"gantrain: note: {note}", file=sys.stderr)
    if resume and resume != "auto":
        resume = str(Path(resume).resolve())
    command = entrypoint(config, [*overrides, *paths], run_dir=run_dir, workers=workers,
                         gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, resume=resume)
    jobs = client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return jobs, jobs.submit_job(entrypoint=command, runtime_env=env, submission_id=job_id)
        except Exception as exc:
            # A cluster that has just started answers 500 "No available agent to submit job" until its job
            # agent is up: wait for it rather than fail.
            if "no available agent" not in str(exc).lower() or time.monotonic() > deadline:
                raise _explain(address, "submit", exc) from None
            time.sleep(2)


def wait(jobs: Any, job_id: str, address: str, follow: bool = True, poll: float = 1.0) -> str:
    """Poll until the job ends, printing its new log lines; returns the final status."""
    shown = 0
    while True:
        status = str(_call(address, job_id, jobs.get_job_status, job_id)).split(".")[-1]
        if follow:
            text = _call(address, job_id, jobs.get_job_logs, job_id)
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
        if status in TERMINAL:
            return status
        time.sleep(poll)


def status(address: str, job_id: str) -> dict[str, Any]:
    info = _call(address, job_id, client(address).get_job_info, job_id)
    return {"job_id": job_id, "status": str(info.status).split(".")[-1], "message": info.message or "",
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time}


def logs(address: str, job_id: str) -> str:
    return _call(address, job_id, client(address).get_job_logs, job_id)


def stop(address: str, job_id: str) -> bool:
    return bool(_call(address, job_id, client(address).stop_job, job_id))
