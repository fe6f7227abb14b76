"""Run K training steps on a fixed sequence of global batches; run by the distributed tests via torchrun.

Every rank takes its slice of each global batch, as a data-parallel job over the same data would, so
any world size x accumulation split must reproduce the single-process result.

    python -m torch.distributed.run --nproc-per-node W tests/ddp_worker.py DATA OUT ENGINE MICRO STEPS [k=v ...]
"""

import hashlib
import sys
from pathlib import Path

import torch

from conftest import tiny_config
from gantrain import config as config_mod
from gantrain.data.stream import read_manifest, samples
from gantrain.engines import make_engine
from gantrain.train.loop import Trainer, resolve


class GlobalBatches:
    def __init__(self, data: Path, batch: int, micro: int, rank: int, world: int):
        items = list(samples(read_manifest(data), seed=0, shuffle=False, infinite=False))
        self.images = torch.stack([item[0] for item in items])
        self.labels = torch.tensor([item[1] for item in items])
        self.batch, self.micro, self.rank, self.world = batch, micro, rank, world
        self.step = self.index = 0

    def __next__(self):
        per_rank = self.batch // self.world
        start = self.step * self.batch + self.rank * per_rank + self.index * self.micro
        self.index += 1
        if self.index == per_rank // self.micro:
            self.step, self.index = self.step + 1, 0
        return self.images[start:start + self.micro], self.labels[start:start + self.micro]

    def close(self):
        pass


def main() -> None:
    data, out, engine_name, micro, steps, *extra = sys.argv[1:]
    sections = {"engine": {"name": engine_name, "device": "cpu"},
                "model": {"norm": "none"}, "loss": {"r1": {"weight": 0.5, "interval": 2}},
                "train": {"batch": 16, "micro_batch": int(micro), "ema_kimg": 0.02}}
    unfreeze_d = "test.unfreeze_d=1" in extra
    if "test.float64=1" in extra:  # every network, latent and loss in float64 (see test_distributed.FLOAT64)
        torch.set_default_dtype(torch.float64)
    for item in (e for e in extra if not e.startswith("test.")):
        config_mod.apply_override(sections, item)  # dotted key=value, value parsed as YAML
    cfg = tiny_config(Path(data), **sections)
    engine = make_engine(cfg)
    cfg = resolve(cfg, read_manifest(data), engine.world_size)
    trainer = Trainer(cfg, Path(out).parent, engine)
    trainer.loader.close()
    trainer.loader = GlobalBatches(Path(data), cfg.train.batch, cfg.train.micro_batch, engine.rank,
                                   engine.world_size)
    if unfreeze_d:  # the bug the tests must catch: D wrapped and trainable during the G step
        def g_main_unfrozen(real, real_c, z, c):
            trainer.D.raw.requires_grad_(True)
            return torch.nn.functional.softplus(-trainer.D.module(trainer.G.module(z, c), c).float()).mean()

        trainer.phases[-1].loss = g_main_unfrozen
    if "test.const_noise=1" in extra:  # a deterministic style-based G: comparable with one process
        for model in (trainer.G_model, trainer.G_ema):
            model.noise_mode = "const"
    aug_p = []  # ADA's p after each step: every rank and every split must follow the same trajectory
    for _ in range(int(steps)):
        trainer.train_step()
        aug_p.append(trainer.aug_p)
    # Every rank must hold the same weights (a missed gradient reduction would show here first).
    flat = torch.cat([p.detach().flatten() for m in (trainer.G_model, trainer.D_model) for p in m.parameters()])
    digests = engine.gather(hashlib.sha256(flat.cpu().numpy().tobytes()).hexdigest())
    assert len(set(digests)) == 1, f"ranks disagree on the weights: {digests}"
    if "test.distinct_model_rng=1" in extra:  # randomness inside the models (noise inputs) differs per rank
        seeds = engine.gather(torch.initial_seed())
        assert len(set(seeds)) == engine.world_size, f"ranks share the models' random stream: {seeds}"
    nets = {"G": trainer.G.state_dict(), "D": trainer.D.state_dict()}  # collective under ZeRO
    if engine.is_main:
        torch.save({"G": trainer.G_model.state_dict(), "D": trainer.D_model.state_dict(),
                    "G_ema": trainer.G_ema.state_dict(),
                    "G_opt": nets["G"]["optimizer"], "D_opt": nets["D"]["optimizer"],
                    "G_params": [name for name, _ in trainer.G_model.named_parameters()],
                    "D_params": [name for name, _ in trainer.D_model.named_parameters()],
                    "pl_mean": trainer.pl_mean.cpu(), "aug_p": aug_p}, out)
    engine.close()


if __name__ == "__main__":
    main()
