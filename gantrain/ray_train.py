"""`gantrain train --ray`: the same training entry point on every worker of a Ray Train TorchTrainer.

Ray starts the workers, sets up the torch process group (gloo on CPU, NCCL on GPUs) and the RANK /
LOCAL_RANK / WORLD_SIZE environment; the DDP and DeepSpeed engines find that group and never create a
second one. Every gantrain checkpoint is reported to Ray (`ray.train.report`, rank 0 attaches the
checkpoint file; the others report metrics only, as Ray requires every worker to report). When a worker
dies (a crash, an OOM kill, a lost node) Ray restarts the whole group, up to `ray.max_failures` times,
and each worker resumes from `ray.train.get_checkpoint()`: weights, optimizers, EMA, counters, RNG
states, data cursors and schedule, exactly as `--resume` does. A preemption notice from Ray
(`ray.train.get_preemption_info`, e.g. a spot node being reclaimed) makes the loop checkpoint at once.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gantrain import config as config_mod
from gantrain.config import Config, ConfigError
from gantrain.train import checkpoint
from gantrain.train.loop import Host, run

log = logging.getLogger("gantrain")


_SIGTERM = threading.Event()


def _catch_sigterm(_actor: Any = None) -> None:
    """Runs on the worker actor's main thread (the only one that may set signal handlers)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: _SIGTERM.set())


class StopFlag:
    """A Ray actor (num_cpus=0) the driver sets when it is asked to stop (SIGTERM/SIGINT): the workers see
    it, checkpoint and end the run as finished, instead of being killed with the driver."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value


STOP_POLL_S = 1.0  # how often a worker asks the driver's StopFlag (one small actor call)


class RayHost(Host):
    """Reports checkpoints to Ray Train, relays its preemption notices and SIGTERM to the loop.

    The training function runs in a thread of the worker actor, where Python cannot install signal
    handlers, and Ray's own SIGTERM handler exits the process at once. So the handler is installed by a
    call on the actor itself (`__ray_call__`, executed on its main thread): SIGTERM then sets a flag,
    the loop checkpoints (reported to Ray) and stops on every rank, and the worker raises so that Ray
    restarts the group from that checkpoint instead of taking the run for finished.
    """

    sections = ("ray",)

    def __init__(self, stop_flag: Any = None) -> None:
        import ray

        self.stop_flag, self.driver_stop, self.polled = stop_flag, False, 0.0
        self.preemption_handled = False
        _SIGTERM.clear()
        try:
            ray.get(ray.get_runtime_context().current_actor.__ray_call__.remote(_catch_sigterm))
        except Exception as exc:  # without it SIGTERM still ends the worker; Ray restarts from the last checkpoint
            log.warning("could not catch SIGTERM on this Ray worker (%s): a SIGTERM will cost the steps since "
                        "the last checkpoint", exc)

    def stop_requested(self) -> bool:
        if self.stop_flag is not None and not self.driver_stop and time.monotonic() - self.polled >= STOP_POLL_S:
            import ray

            self.polled = time.monotonic()
            self.driver_stop = bool(ray.get(self.stop_flag.is_set.remote()))
        return _SIGTERM.is_set() or self.driver_stop

    def checkpointed(self, path: Path | None, nimg: int, scalars: dict[str, float]) -> None:
        import ray.train

        metrics = {"nimg": nimg, "kimg": nimg / 1000, **{k: v for k, v in scalars.items() if k.startswith("Loss/")}}
        if path is None:
            ray.train.report(metrics)
            return
        # Ray uploads a whole directory: stage a hard link of the one checkpoint file (a copy across filesystems).
        staging = Path(tempfile.mkdtemp(prefix="gantrain-report-"))
        try:
            try:
                os.link(path, staging / path.name)
            except OSError:
                shutil.copy2(path, staging / path.name)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)),
                             checkpoint_dir_name=path.stem)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def preempted(self) -> bool:
        import ray.train

        if self.preemption_handled or ray.train.get_preemption_info() is None:
            return False
        self.preemption_handled = True  # one just-in-time checkpoint per notice; the restart resumes from it
        return True


class StoppedBySignal(RuntimeError):
    """Raised by a worker that checkpointed and stopped on SIGTERM, so that Ray counts it as a failure."""


def worker_main(config: dict[str, Any]) -> None:
    """The training function of every Ray worker."""
    import ray.train
    import ray.train.torch
    import torch

    cfg = config_mod.from_dict(config["cfg"])
    logging.getLogger("gantrain").propagate = False  # Ray's root handler would print every line a second time
    if torch.cuda.is_available() and config["gpus_per_worker"] > 0:
        cfg.engine.device = str(ray.train.torch.get_device())
    # The driver refused a run dir with checkpoints unless asked to resume, so "auto" only finds what this
    # run wrote: it covers a restart after rank 0 wrote a checkpoint but before Ray registered it.
    resume = config["resume"] or "auto"
    restored = ray.train.get_checkpoint()
    local = None
    if restored is not None:  # a restarted group: continue from the last checkpoint Ray holds
        local = Path(tempfile.mkdtemp(prefix="gantrain-restore-"))
        restored.to_directory(str(local))
        files = sorted(local.glob("checkpoint-*.pt"))
        if not files:
            raise RuntimeError(f"the checkpoint Ray restored ({restored.path}) holds no gantrain checkpoint")
        resume = str(files[-1])
        if ray.train.get_context().get_world_rank() == 0:
            logging.getLogger("gantrain").warning("restarted by Ray: resuming from %s", restored.path)
    host = RayHost(config.get("stop_flag"))
    try:
        result = run(cfg, config["run_dir"], resume=resume, host=host)
        # The ranks agreed to stop when any of them saw a request; ask the flag itself, as a rank that stopped
        # for another rank's reason has not polled it since.
        if result["interrupted"] and host.stop_flag is not None and ray.get(host.stop_flag.is_set.remote()):
            return  # the driver was asked to stop: a finished run, not a failure for Ray to restart
        if result["interrupted"]:
            raise StoppedBySignal(f"stopped at kimg {result['nimg'] / 1000:.2f} after checkpointing (SIGTERM to a "
                                  "worker); Ray restarts the group from that checkpoint")
    finally:
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)


def unique_name(run_dir: Path) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{run_dir.name}-{stamp}-{secrets.token_hex(2)}"


def _check_engine(cfg: Config, workers: int) -> None:
    if workers < 1:
        raise ConfigError("--workers", f"must be >= 1 (got {workers})")
    if workers > 1 and cfg.engine.name == "single":
        raise ConfigError("engine.name", f"--ray --workers {workers} needs a distributed engine (ddp or deepspeed)")


CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def _not_state_api_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Failed to query Ray Train Controller actor state")


def quiet_without_state_api() -> None:
    """worker_process_setup_hook of the local instance init_ray starts. That instance has no dashboard, so
    no State API; Ray Train's PlacementGroupCleaner asks the State API whether the controller is alive
    every second and logs a warning for each failed query (28 in a 0.32 kimg 2-worker run, forwarded to the
    console). Only that message is dropped. What it guards (removing the placement group if the controller
    dies uncleanly) does not arise here: the instance goes away with the driver."""
    logging.getLogger(CLEANER_LOGGER).addFilter(_not_state_api_noise)


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to ADDRESS, or start a local single-node Ray instance without dashboard or Jobs API.

    Ray resolves 127.0.0.1 to the machine's reachable address on purpose, and its core gRPC servers
    (GCS, raylet, agents) listen on all interfaces; Ray's token authentication, on by default in current
    releases, guards them. gantrain adds no server of its own."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 runtime_env={"worker_process_setup_hook": "gantrain.ray_train.quiet_without_state_api"})


def train_on_ray(cfg: Config, run_dir: Path, *, workers: int, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                 address: str | None = None, resume: str | None = None) -> dict[str, Any]:
    """Run CFG on WORKERS Ray workers; returns what Ray's Result says (checkpoint path, metrics)."""
    _check_engine(cfg, workers)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Ray workers run in directories of their own: every relative path means what it means here.
    cfg = config_mod.absolute_paths(cfg, Path.cwd())
    if resume and resume != "auto":
        resume = str(Path(resume).resolve())
    run_dir = run_dir.resolve()
    storage = cfg.ray.storage_path or str(run_dir / "ray")
    name = cfg.ray.name or unique_name(run_dir)
    if cfg.ray.name and "://" not in storage and (Path(storage) / name).exists() and not resume:
        raise ConfigError("ray.name", f"a Ray run '{name}' already exists in {storage}; pass --resume auto to "
                          "continue it, or choose another name")
    if not resume and checkpoint.list_checkpoints(run_dir):
        raise ConfigError("", f"{run_dir} already holds checkpoints; pass --resume auto to continue that run or "
                          "--run-dir for a new one")
    init_ray(address, num_cpus=None if address else max(int(workers * cpus_per_worker), 1))
    import ray

    stop_flag = ray.remote(num_cpus=0)(StopFlag).remote()
    trainer = TorchTrainer(
        worker_main,
        train_loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir), "resume": resume,
                           "gpus_per_worker": gpus_per_worker, "stop_flag": stop_flag},
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker > 0 else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker={"CPU": cpus_per_worker,
                                                           **({"GPU": gpus_per_worker} if gpus_per_worker else {})}),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.log.keep)),
    )
    previous: dict[int, Any] = {}

    def stop(signum: int, _frame: Any) -> None:
        """SIGTERM/SIGINT to the driver (a scheduler, `timeout`, Ctrl-C, `gantrain jobs stop`): the workers
        checkpoint and stop; a second signal gets the previous handler (Ctrl-C twice aborts)."""
        print(f"gantrain: {signal.Signals(signum).name}: asking the Ray workers to checkpoint and stop",
              file=sys.stderr, flush=True)
        threading.Thread(target=lambda: ray.get(stop_flag.set.remote()), daemon=True).start()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = trainer.fit()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stopped = bool(ray.get(stop_flag.is_set.remote()))
    ray.kill(stop_flag)
    return {"name": name, "storage": storage, "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "metrics": result.metrics or {}, "interrupted": stopped}
