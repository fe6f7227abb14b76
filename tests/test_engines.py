"""Engine construction: clear refusals on CPU, and the CUDA-only pieces (skipped without a GPU)."""

import os

import pytest
import torch

from gantrain import config as config_mod
from gantrain.config import ConfigError
from gantrain.engines import make_engine


def _cfg(**engine):
    return config_mod.from_dict({"data": {"path": "x"}, "engine": engine})


def test_cpu_refusals_name_the_key(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="engine.sync_batchnorm: needs CUDA"):
            make_engine(_cfg(name="ddp", device="cpu", sync_batchnorm=True))
        with pytest.raises(ConfigError, match="engine.precision: fp16 with engine.name=deepspeed"):
            make_engine(_cfg(name="deepspeed", precision="fp16"))
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="engine.name: ddp needs a launcher"):
        make_engine(_cfg(name="ddp", device="cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="engine.name: 'single' cannot run in a group of 2"):
        make_engine(_cfg(name="single"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm needs CUDA (no CPU stand-in)")
def test_sync_batchnorm_on_cuda(monkeypatch):
    from gantrain import models

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29000 + os.getpid() % 1000))
    engine = make_engine(_cfg(name="ddp", device="cuda", sync_batchnorm=True))
    try:
        _, D = models.build(config_mod.ModelConfig(channels=8), models.DataSpec(16, 1, 0))
        net = engine.setup(D, lambda params: torch.optim.Adam(params))
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in net.raw.modules())
        net.backward(net.module(torch.randn(4, 1, 16, 16, device=engine.device)).mean())
        assert net.step()[0]
    finally:
        engine.close()


def test_deepspeed_says_so_before_building_its_cpu_op(tmp_path, monkeypatch):
    """The first DeepSpeed run on a machine JIT-compiles a communication op (measured: 53 s here, silent).
    With an empty extension cache gantrain prints one line naming the cache first; once built, nothing."""
    if torch.cuda.is_available():
        pytest.skip("the op is built only for DeepSpeed's CPU accelerator")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    from gantrain.engines.deepspeed import pending_op_build

    notice = pending_op_build()
    assert notice is not None and "\n" not in notice and str(tmp_path) in notice and "once" in notice
    (tmp_path / "deepspeed_shm_comm").mkdir(exist_ok=True)  # torch's build directory for the op, as built
    (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").write_bytes(b"")
    assert pending_op_build() is None


@pytest.mark.slow
def test_engine_compile_trains_like_eager_with_penalties_uncompiled(digits16, tmp_path):
    """engine.compile: 4 steps with lazy R1 through torch.compile'd G and D (R1's double backward runs
    the uncompiled forward: a compiled graph would raise) == eager, up to float32 reassociation: the
    equivalence tests' derived bounds (fused kernels change only the order of float32 operations)."""
    from conftest import tiny_config
    from equivalence import ADAM_EPS, tolerance
    from gantrain.data.stream import read_manifest
    from gantrain.engines.single import SingleEngine
    from gantrain.train.loop import Trainer, resolve

    nets = []
    for compile_ in (False, True):
        cfg = tiny_config(digits16, model={"norm": "none"}, loss={"r1": {"weight": 0.5, "interval": 2}},
                          train={"batch": 16, "ema_kimg": 0.02}, optim={"eps": ADAM_EPS},
                          engine={"compile": compile_})
        cfg = resolve(cfg, read_manifest(digits16), 1)
        trainer = Trainer(cfg, tmp_path / str(compile_), SingleEngine("cpu", "fp32", cfg.engine.compile))
        for _ in range(4):
            trainer.train_step()
        trainer.loader.close()
        assert isinstance(trainer.G.module, torch._dynamo.eval_frame.OptimizedModule) == compile_
        nets.append([*trainer.G_model.parameters(), *trainer.D_model.parameters()])
    atol, rtol = tolerance(4)
    for eager, compiled in zip(*nets):
        assert torch.allclose(eager, compiled, atol=atol, rtol=rtol)


@pytest.mark.parametrize("family", ["dcgan", "stylegan2"])
def test_channels_last_trains_like_the_contiguous_layout(family, digits16, tmp_path):
    """engine.channels_last: G, G_ema, D and the reals in the channels_last layout; 4 steps with lazy R1 (and
    path length and style mixing for StyleGAN2) == the contiguous layout, up to float32 reassociation (other
    convolution kernels only reorder sums: the equivalence tests' derived bounds); the export is readable."""
    from conftest import tiny_config
    from equivalence import ADAM_EPS, tolerance
    from safetensors.torch import load_file
    from test_stylegan2 import STYLEGAN2_TINY

    from gantrain.data.stream import read_manifest
    from gantrain.engines.single import SingleEngine
    from gantrain.train.loop import Trainer, resolve

    model = {"norm": "none"} if family == "dcgan" else STYLEGAN2_TINY
    loss = {"r1": {"weight": 0.5, "interval": 2}}
    if family == "stylegan2":
        loss["pl"] = {"weight": 2.0, "interval": 2}
    nets = []
    for channels_last in (False, True):
        cfg = tiny_config(digits16, model=model, loss=loss, train={"batch": 16, "ema_kimg": 0.02},
                          optim={"eps": ADAM_EPS}, engine={"channels_last": channels_last})
        cfg = resolve(cfg, read_manifest(digits16), 1)
        (tmp_path / str(channels_last)).mkdir()
        trainer = Trainer(cfg, tmp_path / str(channels_last), SingleEngine("cpu", "fp32"))
        for _ in range(4):
            trainer.train_step()
        reals = trainer._real_batch()[0][0]
        trainer.loader.close()
        convs = [p for net in (trainer.G_model, trainer.D_model, trainer.G_ema) for p in net.parameters()
                 if p.dim() == 4]
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert convs and all(p.is_contiguous(memory_format=layout) for p in convs)
        assert reals.is_contiguous(memory_format=layout)
        assert trainer.snapshot() is not None
        export = load_file(next((tmp_path / str(channels_last)).glob("G_ema-*.safetensors")))
        assert export.keys() == trainer.G_ema.state_dict().keys()
        nets.append([*trainer.G_model.parameters(), *trainer.D_model.parameters()])
    atol, rtol = tolerance(4)
    for contiguous, last in zip(*nets):
        assert torch.allclose(contiguous, last, atol=atol, rtol=rtol)


def test_channels_last_is_refused_under_deepspeed():
    with pytest.raises(ConfigError, match="engine.channels_last: not supported with engine.name=deepspeed"):
        _cfg(name="deepspeed", channels_last=True)


def test_engine_compile_is_refused_under_deepspeed():
    with pytest.raises(ConfigError, match="engine.compile: not supported with engine.name=deepspeed"):
        _cfg(name="deepspeed", compile=True)
