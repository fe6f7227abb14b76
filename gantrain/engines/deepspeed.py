"""DeepSpeed ZeRO: one `deepspeed.initialize` engine per network, our own torch optimizer inside.

Each engine counts its own micro-steps, so `gradient_accumulation_steps` holds across the G/D
alternation as long as every phase runs all its micro-batches (the loop guarantees it). The loop
already divides each micro-batch loss by the accumulation count, so backward is told not to scale
again. The frozen network is called unwrapped with requires_grad off: with ZeRO-2 a wrapped frozen D
asserts, and with ZeRO-1 it silently absorbs G's gradients.

Checkpoints: ZeRO-1/2 keep full parameters on every rank, so weights are saved as usual; the
partitioned optimizer state of every rank is gathered into the checkpoint and handed back to
DeepSpeed's own loader. Such a checkpoint resumes under DeepSpeed on the same number of ranks; its
weights and G_ema load anywhere (sample, export).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gantrain.config import ConfigError, EngineConfig, TrainConfig
from gantrain.engines.base import Net, OptimizerFactory
from gantrain.engines.ddp import DDPEngine


def checkpoint_safe_globals() -> list[type]:
    """DeepSpeed classes inside a ZeRO optimizer state, allowed for torch.load(weights_only=True)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, fragment_address, ZeroStageEnum]


class DeepSpeedNet(Net):
    def __init__(self, engine: Any, optimizer: torch.optim.Optimizer, gather):
        super().__init__(engine, engine.module, optimizer)
        self.engine, self._gather = engine, gather

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()  # applies only at the accumulation boundary, counted by the engine

    def no_sync(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed reduces at its own boundary

    def loss_scale(self) -> float:
        return float(getattr(self.engine.optimizer, "loss_scale", 1.0) or 1.0)

    def step(self) -> tuple[bool, torch.Tensor]:
        skipped = self.engine.skipped_steps
        norm = self.engine.get_global_grad_norm()
        norm = torch.as_tensor(0.0 if norm is None else float(norm))
        return self.engine.skipped_steps == skipped, norm

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.raw.state_dict(), "optimizer": self._gather(self.engine.optimizer.state_dict()),
                "scaler": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw.load_state_dict(state["model"])
        saved = state["optimizer"]
        if not isinstance(saved, list):  # a consolidated torch optimizer state (from single/ddp)
            raise ConfigError("engine.name", "this checkpoint was written by the single/ddp engine; importing "
                              "its optimizer state into ZeRO partitions is not implemented: resume with ddp")
        if len(saved) != dist.get_world_size():
            raise ConfigError("engine.name", f"this checkpoint holds ZeRO optimizer partitions for {len(saved)} "
                              f"ranks; resume it with {len(saved)} ranks")
        self.engine.optimizer.load_state_dict(saved, load_optimizer_states=True)


class DeepSpeedEngine(DDPEngine):
    def __init__(self, cfg: EngineConfig, train: TrainConfig):
        if cfg.precision == "fp16":
            reason = "DeepSpeed's CPU accelerator refuses fp16" if not torch.cuda.is_available() else \
                "a per-network fp16 loss scaler under DeepSpeed is not implemented"
            raise ConfigError("engine.precision", f"fp16 with engine.name=deepspeed: {reason}; use bf16 or fp32")
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        import deepspeed

        if not dist.is_initialized() and "RANK" in os.environ:
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        super().__init__(cfg)
        self.zero_stage = cfg.zero_stage
        self.micro_batch, self.accumulation = train.accumulation(self.world_size)

    def _ds_config(self) -> dict[str, Any]:
        # Precision stays ours (autocast from the base engine): parameters and optimizer state in fp32,
        # as on the other engines, rather than DeepSpeed casting the module to bf16.
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": self.accumulation,
            "train_batch_size": self.micro_batch * self.accumulation * self.world_size,
            "zero_optimization": {"stage": self.zero_stage},
            "zero_allow_untested_optimizer": True,  # our torch Adam, not DeepSpeed's JIT-built one
            "steps_per_print": 2**31 - 1,
        }

    def setup(self, module: nn.Module, make_optimizer: OptimizerFactory) -> Net:
        import deepspeed

        module = module.to(self.device)
        optimizer = make_optimizer(module.parameters())
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=self._ds_config())
        net = DeepSpeedNet(engine, ds_optimizer, self.gather)
        self.nets.append(net)
        return net

    def close(self) -> None:
        for net in self.nets:
            net.module = net.engine = None
        super().close()
