"""DeepSpeed ZeRO: one `deepspeed.initialize` engine per network, our own torch optimizer inside.

Accumulation is the loop's, as on the other engines: DeepSpeed runs "unmanaged" (backward only
accumulates, step() is the boundary), so the G/D alternation and lazy regularization phases never
have to line up with a micro-step counter. ZeRO-0/1 reduce gradients at step(); ZeRO-2 reduce-scatters
them after every micro-batch backward (that is how it saves gradient memory). The frozen network is
called unwrapped with requires_grad off: with ZeRO-2 a wrapped frozen D asserts, and with ZeRO-1 it
silently absorbs G's gradients.

Checkpoints hold the optimizer state unsharded, in the torch optimizer's own format: each rank's
partition of the per-element state (Adam's moments, RMSprop's square average) is gathered and cut
back into per-parameter tensors (by DeepSpeed's own offsets of each parameter in the flat buffer),
and re-partitioned on load. So a checkpoint moves freely between single, ddp and ZeRO-0/1/2 and across
world sizes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gantrain.config import ConfigError, EngineConfig, TrainConfig
from gantrain.engines.base import Net, OptimizerFactory, optimizer_tensors
from gantrain.engines.ddp import DDPEngine


class DeepSpeedNet(Net):
    def __init__(self, engine: Any, optimizer: torch.optim.Optimizer):
        super().__init__(engine, engine.module, optimizer)
        self.engine = engine

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop already divided by the micro-batch count

    @property
    def for_double_backward(self) -> nn.Module:
        """The unwrapped module: DeepSpeed's hooks on its engine's forward outputs also run on an inner
        autograd.grad (ZeRO-2: IndexError in reduce_ipg_grads). Its parameter hooks still see the backward."""
        return self.raw

    def step(self) -> tuple[bool, torch.Tensor]:
        """step() is the accumulation boundary: reduce, update. Nothing is loss-scaled under DeepSpeed
        here (fp16 is refused), so no step is ever skipped."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()  # None at ZeRO-0 with a plain torch optimizer
        return True, torch.as_tensor(0.0 if norm is None else float(norm))

    def state_tensors(self) -> list[torch.Tensor]:
        """Under ZeRO the step writes the fp32 partitions (then copied into the module) and the base
        optimizer's state over those partitions."""
        groups = self._zero_groups()
        if groups is None:
            return super().state_tensors()
        base = self.engine.optimizer.optimizer
        return [*self.raw.parameters(), *self.raw.buffers(), *(part for part, *_ in groups),
                *optimizer_tensors(base)]

    def _zero_groups(self):
        """(fp32 partition, params, their offsets in the flat buffer, flat length) per ZeRO group."""
        zero = self.engine.optimizer
        if not hasattr(zero, "single_partition_of_fp32_groups"):
            return None  # stage 0: the optimizer is the plain torch one
        return [(part, zero.round_robin_bit16_groups[g], zero.round_robin_bit16_offsets[g],
                 zero.bit16_groups_flat[g].numel()) for g, part in enumerate(zero.single_partition_of_fp32_groups)]

    def state_dict(self) -> dict[str, Any]:
        """Unsharded, in the torch optimizer's own format: resumable on any engine and world size.
        Collective: every rank contributes its partition of the per-element state (Adam's moments,
        RMSprop's square average, ...); 0-dim entries such as `step` are the same on every rank."""
        groups = self._zero_groups()
        if groups is None:
            return super().state_dict()
        base = self.engine.optimizer.optimizer
        index = {id(p): k for k, p in enumerate(self.raw.parameters())}
        state: dict[int, dict[str, torch.Tensor]] = {}
        for part, params, offsets, _ in groups:
            moments = {k: v for k, v in base.state.get(part, {}).items() if isinstance(v, torch.Tensor)}
            if not moments:
                continue
            full, scalars = {}, {}
            for key, value in moments.items():
                if value.dim() == 0:
                    scalars[key] = value.detach().cpu().clone()
                    continue
                pieces = [torch.empty_like(value) for _ in range(dist.get_world_size())]
                dist.all_gather(pieces, value)
                full[key] = torch.cat(pieces).cpu()
            for p, offset in zip(params, offsets):
                state[index[id(p)]] = {**{k: v.clone() for k, v in scalars.items()},
                                       **{k: v[offset:offset + p.numel()].view_as(p).clone() for k, v in full.items()}}
        hyper = {k: v for k, v in base.param_groups[0].items() if k != "params"}
        optimizer = {"state": state, "param_groups": [{**hyper, "params": list(range(len(index)))}]}
        return {"model": self.raw.state_dict(), "optimizer": optimizer, "scaler": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-partition an unsharded optimizer state (from any engine) into this rank's ZeRO partition."""
        groups = self._zero_groups()
        if groups is None:
            return super().load_state_dict(state)
        self.raw.load_state_dict(state["model"])  # in place: the module's params view the flat buffers
        saved = state["optimizer"]["state"]
        base, rank = self.engine.optimizer.optimizer, dist.get_rank()
        index = {id(p): k for k, p in enumerate(self.raw.parameters())}
        for part, params, offsets, flat_len in groups:
            # A parameter without saved state (a block a growing model has just activated) starts from zero
            # moments and shares the group's step count: ZeRO keeps one flat state per group.
            present = [saved[index[id(p)]] for p in params if index[id(p)] in saved]
            if not present:
                continue
            first = present[0]
            moments = {k: v.clone() for k, v in first.items() if isinstance(v, torch.Tensor) and v.dim() == 0}
            for key in (k for k, v in first.items() if isinstance(v, torch.Tensor) and v.dim() > 0):
                flat = torch.zeros(flat_len, dtype=part.dtype)
                for p, offset in zip(params, offsets):
                    if index[id(p)] in saved:
                        flat[offset:offset + p.numel()] = saved[index[id(p)]][key].flatten()
                size = part.numel()
                moments[key] = flat[rank * size:(rank + 1) * size].to(part.device).clone()
            base.state[part].update(moments)  # same dict object: DeepSpeed's fragment links stay valid
        self.engine.optimizer._restore_from_bit16_weights()  # fp32 master partition from the loaded weights


def pending_op_build() -> str | None:
    """The line to print when DeepSpeed is about to JIT-compile its CPU communication op (first run on a
    machine, silent for about a minute otherwise); None on GPU or when the op is already built/cached."""
    if torch.cuda.is_available():
        return None
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops
    from torch.utils import cpp_extension

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False) \
            or installed_ops.get(builder.NAME, False):
        return None
    # the directory torch's JIT loader builds into (honours TORCH_EXTENSIONS_DIR)
    build_dir = Path(cpp_extension._get_build_directory(builder.NAME, verbose=False))
    if any(build_dir.glob(f"{builder.NAME}*.so")):
        return None
    return (f"gantrain: building DeepSpeed's CPU communication op ({builder.NAME}) once for this machine, "
            f"about a minute; cached in {build_dir} (set TORCH_EXTENSIONS_DIR to keep it elsewhere)")


class DeepSpeedEngine(DDPEngine):
    def __init__(self, cfg: EngineConfig, train: TrainConfig):
        if cfg.precision == "fp16":
            reason = "DeepSpeed's CPU accelerator refuses fp16" if not torch.cuda.is_available() else \
                "a per-network fp16 loss scaler under DeepSpeed is not implemented"
            raise ConfigError("engine.precision", f"fp16 with engine.name=deepspeed: {reason}; use bf16 or fp32")
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        import deepspeed

        notice = pending_op_build()
        if notice and int(os.environ.get("LOCAL_RANK", 0)) == 0:
            print(notice, file=sys.stderr, flush=True)
        if not dist.is_initialized() and "RANK" in os.environ:
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        super().__init__(cfg)
        self.zero_stage = cfg.zero_stage
        self.micro_batch, _ = train.accumulation(self.world_size)

    def _ds_config(self) -> dict[str, Any]:
        # Precision stays ours (autocast from the base engine): parameters and optimizer state in fp32,
        # as on the other engines, rather than DeepSpeed casting the module to bf16.
        # Accumulation is ours too ("unmanaged": every step() is the boundary, gas 1). With DeepSpeed
        # counting micro-steps instead, the hooks it puts on forward outputs divide any gradient that
        # flows through them by gas -- including the input gradient R1 takes with autograd.grad, which
        # silently shrank the penalty (caught by the ZeRO x accumulation equivalence test).
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,
            "train_batch_size": self.micro_batch * self.world_size,
            "zero_optimization": {"stage": self.zero_stage},
            "zero_allow_untested_optimizer": True,  # our torch optimizer, not DeepSpeed's JIT-built one
            "gradient_clipping": 0.0,  # DeepSpeed 0.19 clips to norm 1.0 unless told otherwise
            "steps_per_print": 2**31 - 1,
        }

    def setup(self, module: nn.Module, make_optimizer: OptimizerFactory) -> Net:
        import deepspeed

        module = self.place(module)
        optimizer = make_optimizer(module.parameters())
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=self._ds_config())
        net = DeepSpeedNet(engine, ds_optimizer)
        self.nets.append(net)
        return net

    def release(self, net: Net) -> None:
        net.engine.destroy()  # removes ZeRO's gradient hooks from the parameters
        net.module = net.uncompiled = net.engine = None
        self.nets.remove(net)

    def close(self) -> None:
        for net in self.nets:
            net.module = net.engine = None
        super().close()
