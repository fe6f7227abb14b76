"""torch DistributedDataParallel, one process per device; gloo on CPU, NCCL on GPU.

Plain DDP rather than Accelerate: the loop already owns autocast, loss scaling and accumulation, and
Accelerate's CPU path silently trains independent replicas unless told `cpu=True`; DDP has no such
mode. The process group comes from the launcher's environment (torchrun, `gantrain train --nproc`,
Ray Train); if one already exists it is used, never created twice.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gantrain.config import ConfigError, EngineConfig
from gantrain.engines.base import Engine, Net, OptimizerFactory
from gantrain.engines.single import pick_device


class DDPNet(Net):
    def no_sync(self):
        return self.uncompiled.no_sync()


class DDPEngine(Engine):
    def __init__(self, cfg: EngineConfig):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = pick_device(cfg.device, local_rank)
        self.precision, self.compile = cfg.precision, cfg.compile
        self.sync_batchnorm = cfg.sync_batchnorm
        if self.sync_batchnorm and self.device.type != "cuda":
            raise ConfigError("engine.sync_batchnorm", "needs CUDA devices (torch's SyncBatchNorm has no CPU kernel)")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            if "RANK" not in os.environ:
                raise ConfigError("engine.name", "ddp needs a launcher (torchrun, `gantrain train --nproc N`, Ray); "
                                  "RANK is not set")
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.nets: list[Net] = []

    def place(self, module: nn.Module) -> nn.Module:
        """Cross-replica batch norm if asked, then onto this rank's device (before the optimizer exists)."""
        if self.sync_batchnorm:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return module.to(self.device)

    def setup(self, module: nn.Module, make_optimizer: OptimizerFactory) -> Net:
        module = self.place(module)
        optimizer = make_optimizer(module.parameters())
        ids = [self.device.index] if self.device.type == "cuda" else None
        net = self._compiled(DDPNet(DistributedDataParallel(module, device_ids=ids), module, optimizer,
                                    self._scaler()))
        self.nets.append(net)
        return net

    def release(self, net: Net) -> None:
        net.module = net.uncompiled = net.raw  # the DDP wrapper and its reducer (which holds the gradient hooks) go
        self.nets.remove(net)
        gc.collect()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        shape = tensor.shape  # reduced as 1-d: DeepSpeed's CPU all-reduce cannot take a 0-d tensor
        tensor = tensor.to(self.device).clone().reshape(-1)
        dist.all_reduce(tensor)
        return (tensor / self.world_size).reshape(shape).cpu()

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        # Drop the DDP wrappers (and their reducers) before the group goes: otherwise an abort at
        # interpreter exit ("terminate called without an active exception") hits a share of runs.
        for net in self.nets:
            net.module = net.raw
        self.nets.clear()
        gc.collect()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
