"""Real multi-process runs: 2 ranks over gloo on CPU, started by torchrun (no mocks)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equivalence import EQUIVALENCE, GRAD_ATOL, GRAD_RTOL, tolerance
from gantrain.train import checkpoint

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def torchrun(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={nproc}", *args], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def reference(digits16, tmp_path_factory):
    """One process, batch 16, no accumulation: what every split must reproduce."""
    return _states(digits16, tmp_path_factory.mktemp("reference"), 1, "single", 16)


def _states(digits16, tmp_path, world, engine, micro, steps=4, extra=()):
    out = tmp_path / f"{engine}-{world}-{micro}" / "state.pt"
    out.parent.mkdir(parents=True)
    torchrun(world, str(TESTS / "ddp_worker.py"), str(digits16), str(out), engine, str(micro), str(steps),
             *EQUIVALENCE, *extra)
    state = torch.load(out, weights_only=True)
    state["steps"] = steps
    return state


def _sn_gains(state: dict) -> dict[str, float]:
    """Per tensor of a spectrally normalized layer, how much its rounding noise is amplified: the network
    uses W = W_orig / sigma, so the gradient of W_orig is W's gradient (projected) over sigma, and its
    rounding error grows by 1 / sigma -- which Adam's fixed eps passes on to the update; the power
    iteration's u and v follow W_orig / sigma, one more 1 / sigma. sigma is the layer's own estimate,
    u . (W v), from the reference's buffers. Every other tensor: 1."""
    gains = {}
    for name, u in state.items():
        if not name.endswith("parametrizations.weight.0._u"):
            continue
        prefix = name[:-len("0._u")]
        w, v = state[prefix + "original"].double(), state[prefix + "0._v"].double()
        dim = 0 if w.shape[0] == u.numel() else 1  # torch's spectral_norm: dim 1 for transposed convs
        sigma = float(u.double() @ (w.transpose(0, dim).flatten(1) @ v))
        gain = max(1.0, 1.0 / sigma)
        gains.update({prefix + "original": gain, prefix + "0._u": gain ** 2, prefix + "0._v": gain ** 2})
    return gains


def _assert_close(a, b, terms: int = 100):
    """TERMS: how many float32 terms a gradient element sums (equivalence.py's bounds are for ~100; the
    rounding of a sum grows with its length, n * 2^-24 at worst, so the bounds scale with TERMS / 100)."""
    k = max(1.0, terms / 100)
    grad_atol, grad_rtol = GRAD_ATOL * k, GRAD_RTOL * k
    atol, rtol = tolerance(a["steps"])
    atol *= k
    for net in ("G", "D", "G_ema"):  # G_ema is a convex combination of G's weights: the same bound
        gains = _sn_gains(a[net])
        for name in a[net]:
            x, y = a[net][name].double(), b[net][name].double()
            tol = atol * gains.get(name, 1.0)
            assert torch.allclose(x, y, atol=tol, rtol=rtol), \
                f"{net}.{name}: max |diff| {(x - y).abs().max():.3g} > atol {tol:.3g} + rtol {rtol:.3g} |w|"
    for net, opt in (("G", "G_opt"), ("D", "D_opt")):  # Adam moments, unsharded in torch's format
        assert a[opt]["state"].keys() == b[opt]["state"].keys()
        gains = _sn_gains(a[net])
        for index, moments in a[opt]["state"].items():
            gain = gains.get(a[f"{net}_params"][index], 1.0) if f"{net}_params" in a else 1.0
            g_atol = grad_atol * gain
            # m averages gradients: one gradient's bound. v averages squared gradients: |d(g^2)| <= 2|g| d,
            # and by Cauchy-Schwarz the average of 2|g_j| d is at most 2 d sqrt(v).
            m, m_ref = moments["exp_avg"].double(), b[opt]["state"][index]["exp_avg"].double()
            assert torch.allclose(m, m_ref, atol=g_atol, rtol=grad_rtol), \
                f"{opt}[{index}].exp_avg: max |diff| {(m - m_ref).abs().max():.3g}"
            v, v_ref = moments["exp_avg_sq"].double(), b[opt]["state"][index]["exp_avg_sq"].double()
            bound = 2 * (g_atol + grad_rtol * v.sqrt()) * v.sqrt() + g_atol ** 2
            assert ((v - v_ref).abs() <= bound).all(), f"{opt}[{index}].exp_avg_sq"
            assert float(moments["step"]) == float(b[opt]["state"][index]["step"])


def test_ddp_and_accumulation_splits_match_one_process(digits16, tmp_path, reference):
    """batch 16 as 1x16, 2 ranks x 8, 2 ranks x 4 x 2 accumulations: same G, D, G_ema after 4 steps."""
    _assert_close(reference, _states(digits16, tmp_path, 2, "ddp", 8))
    _assert_close(reference, _states(digits16, tmp_path, 2, "ddp", 4))


def _train(tmp_path, digits16, run_dir, nproc, kimg, resume=None, extra=()):
    config = tmp_path / "ddp.yaml"
    config.write_text(f"data: {{path: {digits16}, workers: 1}}\nmodel: {{z_dim: 16, channels: 8}}\n"
                      "engine: {name: ddp, device: cpu}\ntrain: {batch: 16, ema_kimg: 0.05}\n"
                      "loss: {r1: {weight: 1.0, interval: 3}}\n"
                      "log: {progress: false, tick_kimg: 0.032, snapshot_kimg: 0.08, keep: 10}\n")
    args = [str(config), f"train.kimg={kimg}", *extra, "--run-dir", str(run_dir), "--nproc", str(nproc)]
    if resume:
        args += ["--resume", resume]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "gantrain", "train", *args], capture_output=True, text=True,
                            env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return checkpoint.load(run_dir / (run_dir / "latest").read_text().strip())


def _assert_equal_nets(a, b):
    for net in ("G", "D"):
        for name, tensor in a[net]["model"].items():
            assert torch.equal(tensor, b[net]["model"][name]), f"{net}.{name}"
    for name, tensor in a["G_ema"].items():
        assert torch.equal(tensor, b["G_ema"][name]), f"G_ema.{name}"


def test_two_rank_resume_is_exact_and_one_rank_can_continue(digits16, tmp_path):
    straight = _train(tmp_path, digits16, tmp_path / "a", 2, 0.16)
    _train(tmp_path, digits16, tmp_path / "b", 2, 0.08)
    resumed = _train(tmp_path, digits16, tmp_path / "b", 2, 0.16, resume="auto")
    assert straight["counters"]["nimg"] == resumed["counters"]["nimg"] == 160
    _assert_equal_nets(straight, resumed)
    assert len(resumed["data"]) == 2 and resumed["data"] == straight["data"]
    # The 2-rank checkpoint continues on one rank (data stream restarts at the next epoch; logged).
    single = _train(tmp_path, digits16, tmp_path / "b", 1, 0.24, resume="auto", extra=["engine.name=single"])
    assert single["counters"]["nimg"] == 240 and len(single["data"]) == 1


def test_a_failing_rank_fails_the_launch(digits16, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"data: {{path: {digits16}, workers: 9}}\nengine: {{name: ddp, device: cpu}}\n"
                      "log: {progress: false}\n")
    result = subprocess.run([sys.executable, "-m", "gantrain", "train", str(config), "--nproc", "2",
                             "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode != 0
    assert "9 shards cannot feed 2 ranks x 9 workers" in result.stdout + result.stderr


@pytest.mark.parametrize("stage,micro", [(1, 8), (2, 8), (2, 4)])
def test_zero_matches_one_process(digits16, tmp_path, reference, stage, micro):
    """DeepSpeed ZeRO-1/2 over 2 ranks x 8, and ZeRO-2 with 2 accumulation steps across the G/D
    alternation, == one process x 16 (and so == DDP, tested above)."""
    states = _states(digits16, tmp_path, 2, "deepspeed", micro, extra=[f"engine.zero_stage={stage}"])
    _assert_close(reference, states)


HEADS = ["model.conditional=true", "model.conditioning=acgan", "model.spectral_norm=both", "loss.name=hinge",
         "loss.ortho.weight=0.001", "loss.drift.weight=0.01"]


# Networks, latents and penalties in float64 (the losses still take float32 logits; DeepSpeed still keeps
# float32 master weights and reduces float32 gradients). Why: the equivalence bounds hold only while no
# ReLU / LeakyReLU / hinge kink lies between the two runs' activations. In float32 this configuration's
# spectral-norm gains (1/sigma up to 6) make the runs drift apart by ~1e-5 relative in 4 steps, enough
# for a unit to cross its kink on some machines: one G.net.3 output channel then got a whole gradient term
# more in one run (measured: that channel 1000x off, 9x over the bound, every other tensor under 0.4x).
# In float64 the drift is ~1e-16 (DDP) and ~1e-8 (ZeRO-2's float32 masters), a crossing ~1e8 / ~1e2 times
# less likely. The float32 bounds still apply unchanged: every rounding left (the float32 logits and
# masters) is a float32 rounding they already cover; a real fault (a missed reduction, a wrong scale, a
# frozen head) moves weights by lr-sized steps, ~1e3x above them.
FLOAT64 = ["test.float64=1"]


def test_conditioning_heads_and_regularizers_match_one_process(digits16, tmp_path):
    """AC-GAN head (unused by the lazy R1 phase), spectral norm in G and D, hinge loss, ortho, drift:
    2 ranks under DDP and under ZeRO-2 == one process, with no unused-parameter error. (Feature matching
    and the minibatch layers use per-rank batch statistics, like batch norm, so they are not in this list.)
    Run in float64 (FLOAT64, above)."""
    heads = HEADS + FLOAT64
    reference = _states(digits16, tmp_path, 1, "single", 16, extra=heads)
    assert reference["G"]["net.0.bias"].dtype == torch.float64
    _assert_close(reference, _states(digits16, tmp_path, 2, "ddp", 8, extra=heads))
    _assert_close(reference, _states(digits16, tmp_path, 2, "deepspeed", 8, extra=heads + ["engine.zero_stage=2"]))


AUGMENT = ["augment.name=ada", "augment.pipe=bgc", "augment.p=0.5", "augment.interval=1", "augment.speed_kimg=0.2"]


def test_ada_under_ddp_follows_one_process(digits16, tmp_path):
    """ADA at p = 0.5, adjusted after every D step by 16 / 200 (r_t is k / 16, never the 0.6 target, so p
    moves each time): 2 ranks x 2 accumulations follow one process's p trajectory exactly -- r_t's sums
    of signs are reduced over ranks -- and train the same nets, since every sample draws its augmentation
    from its place in the global batch, whatever rank and micro-batch it lands on."""
    reference = _states(digits16, tmp_path / "one", 1, "single", 16, extra=AUGMENT)
    split = _states(digits16, tmp_path / "ddp", 2, "ddp", 4, extra=AUGMENT)
    assert split["aug_p"] == reference["aug_p"]
    moves = [b - a for a, b in zip([0.5, *reference["aug_p"]], reference["aug_p"])]
    assert all(abs(abs(move) - 16 / 200) < 1e-12 for move in moves), moves  # one adjustment per D step
    _assert_close(reference, split)


PROGRESSIVE = ["model.name=progan", "model.minibatch=stddev", "model.z_dim=16", "progressive.enabled=true",
               "progressive.stabilize_kimg=0.016", "progressive.fade_kimg=0.032", "loss.drift.weight=0.001"]


def test_progressive_growing_under_ddp_and_zero2_matches_one_process(digits16, tmp_path):
    """7 steps of 16: 4x4, the 8x8 fade, 8x8, the 16x16 fade, 16x16 -- two resolution changes, two fades,
    four re-wraps; non-saturating loss with lazy R1 (WGAN-GP's interpolation weights are drawn per rank,
    so it is not comparable with one process). DDP (optimizer state carried across re-wraps by name) ==
    one process; ZeRO-2 == one process with a fresh optimizer at each resolution, and runs with the
    state carried too (a block that joins gets zero moments there). No unused-parameter error anywhere;
    ranks hold the same weights."""
    reference = _states(digits16, tmp_path / "one", 1, "single", 16, steps=7, extra=PROGRESSIVE)
    _assert_close(reference, _states(digits16, tmp_path / "ddp", 2, "ddp", 8, steps=7, extra=PROGRESSIVE))
    reset = PROGRESSIVE + ["progressive.reset_optimizer=true"]
    reference = _states(digits16, tmp_path / "one-reset", 1, "single", 16, steps=7, extra=reset)
    zero2 = ["engine.zero_stage=2"]
    zero = _states(digits16, tmp_path / "zero", 2, "deepspeed", 8, steps=7, extra=reset + zero2)
    _assert_close(reference, zero)
    carried = _states(digits16, tmp_path / "zero-carry", 2, "deepspeed", 8, steps=7, extra=PROGRESSIVE + zero2)
    assert carried["G"].keys() == reference["G"].keys()


def test_zero1_equivalence_catches_an_unfrozen_d(digits16, tmp_path, reference):
    """The trap from DESIGN.md: under ZeRO-1, a D that is not frozen during the G step absorbs G's
    gradients without any error. Run that broken variant: D must come out different."""
    broken = _states(digits16, tmp_path, 2, "deepspeed", 8, extra=["engine.zero_stage=1", "test.unfreeze_d=1"])
    atol, rtol = tolerance(broken["steps"])
    for name in reference["D"]:
        if not torch.allclose(reference["D"][name], broken["D"][name], atol=atol, rtol=rtol):
            return
    pytest.fail("an unfrozen D during the G step went unnoticed")


def test_zero2_checkpoint_resumes_exactly_and_moves_between_engines(digits16, tmp_path):
    """ZeRO-2 partitions are gathered into an unsharded checkpoint and re-partitioned on resume: exact
    on the same ranks; and the same file continues under ddp on one rank, then back under ZeRO-1."""
    zero = ["engine.name=deepspeed", "engine.zero_stage=2"]
    straight = _train(tmp_path, digits16, tmp_path / "a", 2, 0.16, extra=zero)
    # resume from the straight run's own 80-image snapshot in a new run dir (one DeepSpeed launch fewer than
    # a separate run to 0.08; the ddp test above covers the checkpoint written when a run ends)
    halfway = tmp_path / "a" / checkpoint.checkpoint_name(80)
    resumed = _train(tmp_path, digits16, tmp_path / "b", 2, 0.16, resume=str(halfway), extra=zero)
    optimizer = resumed["D"]["optimizer"]
    assert sorted(optimizer["state"]) == optimizer["param_groups"][0]["params"]
    _assert_equal_nets(straight, resumed)
    moved = _train(tmp_path, digits16, tmp_path / "b", 1, 0.192, resume="auto", extra=["engine.name=single"])
    back = _train(tmp_path, digits16, tmp_path / "b", 2, 0.24, resume="auto",
                  extra=["engine.name=deepspeed", "engine.zero_stage=1"])
    assert (moved["counters"]["nimg"], back["counters"]["nimg"]) == (192, 240)
    steps = {float(s["step"]) for s in back["G"]["optimizer"]["state"].values()}
    assert steps == {15.0}  # Adam's step count carried through all three engines


def test_sigterm_to_the_ranks_checkpoints_and_exits_zero(digits16, tmp_path):
    """A preempted node signals every process: the ranks agree to stop, rank 0 checkpoints, all exit 0."""
    import signal
    import time

    import psutil

    config = tmp_path / "long.yaml"
    config.write_text(f"data: {{path: {digits16}, workers: 0}}\nmodel: {{z_dim: 16, channels: 8}}\n"
                      "engine: {name: ddp, device: cpu}\ntrain: {kimg: 1000, batch: 16}\n"
                      "log: {progress: false, tick_kimg: 0.016}\n")
    run_dir = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "gantrain", "train", str(config), "--nproc", "2",
                             "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not (run_dir / "stats.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "torch.distributed.run" not in
               " ".join(p.cmdline())]
    assert len(workers) == 2
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    state = checkpoint.load(run_dir / (run_dir / "latest").read_text().strip())
    assert 0 < state["counters"]["nimg"] < 1_000_000 and len(state["data"]) == 2


BIGGAN = ["model.name=biggan", "model.conditional=true", "model.z_dim=16", "model.channels=2", "model.shared_dim=4",
          "model.attention=[16]", "model.spectral_norm=both", "model.init=ortho", "loss.name=hinge",
          "loss.ortho.weight=0.00005", "train.d_steps=2"]


def test_biggan_ranks_stay_identical_under_ddp_and_zero2(tmp_path):
    """A tiny conditional BigGAN (attention, SN, ortho init and penalty, 2 D steps) on 2 ranks under DDP and
    ZeRO-2: the ranks end with the same weights (ddp_worker.py asserts it) and finite ones. It is not
    compared with one process: G's batch norms normalize with each rank's own micro-batch statistics
    (as BigGAN-PyTorch does without cross-replica BN), so every G output, and all that D learns from it,
    depends on the split."""
    from gantrain.data.pack import pack
    from gantrain.data.sources import open_source

    data = tmp_path / "digits32"
    pack(open_source("digits"), data, 32, shard_size=200, progress=False)
    for engine, extra in (("ddp", []), ("deepspeed", ["engine.zero_stage=2"])):
        state = _states(data, tmp_path / engine, 2, engine, 8, steps=2, extra=BIGGAN + extra)
        for net in ("G", "D"):
            assert all(torch.isfinite(t).all() for t in state[net].values() if t.is_floating_point()), net
