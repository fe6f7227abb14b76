"""Numerical faults: inf/NaN never reach the weights, G_ema, a checkpoint, an export or stats.jsonl."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import tiny_config
from gantrain.cli import main as cli_main
from gantrain.engines.base import Net
from gantrain.train import checkpoint
from gantrain.train.guard import DivergedError, StepGuard, finite
from gantrain.train.loop import run


def _strict_json(line: str) -> dict:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


def _all_finite(tree) -> bool:
    if isinstance(tree, torch.Tensor):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(_all_finite(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_all_finite(v) for v in tree)
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_finiteness_check_is_exact_even_where_its_fast_sum_overflows(dtype):
    big = torch.full((1000,), torch.finfo(dtype).max / 2, dtype=dtype)  # finite, but its sum is inf
    ints = torch.ones(3, dtype=torch.int64)
    assert finite([big, -big, ints]) and finite([])
    for bad in (float("inf"), float("-inf"), float("nan")):
        for template in (big, torch.zeros(5, 7, dtype=dtype)):
            x = template.clone()
            x.view(-1)[3] = bad
            assert not finite([torch.zeros(2, dtype=dtype), x]), (bad, template.abs().max())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_diverging_run_stops_with_one_line_and_never_saves_non_finite_values(digits16, tmp_path, precision):
    """lr 1e30: after one step every forward overflows (batch-norm running_var, losses, gradients).
    Every such step is rolled back, so checkpoints, exports and G_ema stay finite, and the run ends with
    an error naming the kimg and the last good checkpoint instead of exiting 0 on garbage."""
    cfg = tiny_config(digits16, optim={"g_lr": 1e30, "d_lr": 1e30}, engine={"precision": precision},
                      train={"kimg": 3.2, "max_bad_steps": 8}, model={"norm": "batch"},
                      log={"tick_kimg": 0.016, "snapshot_kimg": 0.016, "keep": 100})
    with pytest.raises(DivergedError) as info:
        run(cfg, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "8 steps in a row" in message and "kimg" in message
    saved = checkpoint.list_checkpoints(tmp_path)
    if saved:
        assert str(saved[-1]) in message
    for path in saved:
        state = checkpoint.load(path)
        assert _all_finite(state), path
    for export in tmp_path.glob("G_ema-*.safetensors"):
        from safetensors.torch import load_file
        assert _all_finite(load_file(export)), export
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    records = [_strict_json(line) for line in lines]
    assert any(r.get("Skipped/nonfinite", 0) > 0 for r in records)


def test_a_non_finite_gradient_skips_the_step_and_leaves_the_optimizer_alone():
    model = nn.Linear(3, 1)
    net = Net(model, model, torch.optim.Adam(model.parameters(), lr=0.1))
    net.backward(model(torch.ones(2, 3)).sum())
    assert net.step()[0]
    before = [t.clone() for t in net.state_tensors()]
    net.backward(model(torch.ones(2, 3)).sum() * float("nan"))
    applied, norm = net.step()
    assert not applied and not torch.isfinite(norm)
    assert all(torch.equal(a, b) for a, b in zip(before, net.state_tensors()))
    assert all(p.grad is None for p in model.parameters())


def test_the_guard_rolls_weights_buffers_and_optimizer_state_back_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    net = Net(model, model, torch.optim.Adam(model.parameters(), lr=0.1))
    guard = StepGuard()
    for blow_up, first in ((False, True), (True, False)):
        guard.keep([net])
        before = [t.clone() for t in net.state_tensors()]
        x = torch.randn(8, 3) * (1e30 if blow_up else 1.0)  # BN's running_var overflows to inf
        net.backward(model(x).square().mean())
        net.step()
        if not blow_up:
            assert guard.finite([net])
            continue
        assert not guard.finite([net])
        guard.revert([net])
        assert guard.finite([net])
        assert all(torch.equal(a, b) for a, b in zip(before, net.state_tensors()))


def test_first_step_rollback_leaves_a_fresh_optimizer():
    model = nn.Linear(3, 1)
    net = Net(model, model, torch.optim.Adam(model.parameters(), lr=0.1))
    guard = StepGuard()
    guard.keep([net])
    weights = [p.clone() for p in model.parameters()]
    net.backward(model(torch.ones(2, 3)).sum())
    net.step()
    with torch.no_grad():
        model.weight.fill_(float("inf"))
    guard.revert([net])
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(float(t.abs().sum()) == 0 for t in net.state_tensors()[2:])  # step counts and moments zeroed


def test_checkpoints_and_exports_with_non_finite_values_are_refused(digits16, tmp_path, capsys):
    run(tiny_config(digits16, train={"kimg": 0.016}), tmp_path / "r")
    path = checkpoint.list_checkpoints(tmp_path / "r")[-1]
    state = checkpoint.load(path)
    name = next(iter(state["G_ema"]))
    state["G_ema"][name] = state["G_ema"][name].float() * float("inf")
    with pytest.raises(checkpoint.CheckpointError, match="non-finite"):
        checkpoint.save(tmp_path / "r", state, 999, 10, state["G_ema"], {})
    assert not (tmp_path / "r" / checkpoint.checkpoint_name(999)).exists()
    # An export written by something else (an older version) is refused by `gantrain sample` with one line.
    export = next((tmp_path / "r").glob("G_ema-*.safetensors"))
    from safetensors import safe_open
    with safe_open(str(export), "pt") as f:
        meta, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    weights[name] = weights[name].float() * float("nan")
    bad = tmp_path / "bad.safetensors"
    save_file(weights, str(bad), metadata=meta)
    capsys.readouterr()
    assert cli_main(["sample", str(bad), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.safetensors" in err and "inf/NaN" in err
    assert not (tmp_path / "g.png").exists()


# ---- data faults --------------------------------------------------------------------------------------
def _undecodable_copy(digits16, out):
    """DIGITS16's manifest with every shard replaced by one whose images do not decode."""
    import shutil

    import webdataset as wds

    shutil.copytree(digits16, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        with wds.TarWriter(str(out / entry["name"])) as writer:
            for i in range(entry["count"]):
                writer.write({"__key__": f"{i:06d}", "png": b"\x89PNG not an image", "cls": 0})
    return out


@pytest.mark.parametrize("workers", [0, 1])
def test_a_data_set_where_nothing_decodes_is_one_line_fresh_and_resumed(digits16, tmp_path, workers):
    """Measured: a fresh run crashed with `stack expects a non-empty TensorList`, a resumed one hung at 100%
    CPU. Now both stop after data.max_skipped_in_a_row failures with one line naming the data set."""
    import subprocess
    import sys

    good = tmp_path / "good"
    run(tiny_config(digits16, train={"kimg": 0.016}), good)
    bad = _undecodable_copy(digits16, tmp_path / "bad")
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{path: {bad}, workers: {workers}, max_skipped_in_a_row: 50}}\n"
                      "model: {z_dim: 16, channels: 8, max_channels: 32}\ntrain: {batch: 16, kimg: 1}\n"
                      "log: {progress: false}\n")
    for args in (["--run-dir", str(tmp_path / "fresh")], ["--run-dir", str(good), "--resume", "auto"]):
        result = subprocess.run([sys.executable, "-m", "gantrain", "train", str(config), *args],
                                capture_output=True, text=True, timeout=120)
        err = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr[-2000:]
        assert err[-1].startswith("gantrain: error: ") and "50 samples in a row failed to decode" in err[-1]
        assert str(bad) in err[-1] and "Traceback" not in result.stderr


def test_a_truncated_shard_is_warned_about_and_counted(digits16, tmp_path, caplog):
    import shutil

    shutil.copytree(digits16, tmp_path / "d")
    shard = tmp_path / "d" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    from gantrain.data.stream import StreamLoader, read_manifest

    loader = StreamLoader(read_manifest(tmp_path / "d"), batch_size=200, seed=0, shuffle=False, num_workers=0)
    with caplog.at_level("WARNING", logger="gantrain"):
        next(loader)  # unshuffled: shard 0 comes first, and is counted each time it is read
    assert loader.short_shards == 1
    assert any("short shard" in r.message and "shard-000000.tar" in r.message for r in caplog.records)
    assert "shard-000000.tar" in loader.notes["last_short"]
    loader.close()


def test_verify_checks_every_shards_sha256_count_and_decoding_against_the_manifest(digits16, tmp_path, capsys):
    import shutil

    import webdataset as wds

    shutil.copytree(digits16, tmp_path / "d")
    assert cli_main(["verify", str(tmp_path / "d")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 9 + 1 and all(line.split()[-1] == "ok" for line in lines[1:-1])
    assert lines[-1] == "9 shards, 1797 of 1797 listed samples found, 0 corrupt, 0 shard(s) bad"

    truncated, damaged = tmp_path / "d" / "shard-000000.tar", tmp_path / "d" / "shard-000001.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    rows = list(wds.WebDataset(str(damaged), shardshuffle=False))
    with wds.TarWriter(str(damaged)) as writer:  # same count, one image replaced by junk: sha256 differs
        for i, row in enumerate(rows):
            writer.write({"__key__": row["__key__"], "cls": row["cls"], "png": b"junk" if i == 7 else row["png"]})
    assert cli_main(["verify", str(tmp_path / "d")]) == 1
    table = {line.split()[0]: line.split(maxsplit=5) for line in capsys.readouterr().out.splitlines()[1:-1]}
    name, listed, found, corrupt, sha, status = table["shard-000000.tar"]
    assert (listed, sha) == ("200", "MISMATCH") and int(found) < 200 and status.startswith("BAD")
    name, listed, found, corrupt, sha, status = table["shard-000001.tar"]
    assert (listed, found, corrupt, sha) == ("200", "200", "1", "MISMATCH")
    assert status.startswith("BAD: 000000207: cannot identify image file")
    assert table["shard-000002.tar"][3:] == ["0", "ok", "ok"]

    manifest = tmp_path / "d" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["shards"][2]["sha256"] = "xyz"
    manifest.write_text(json.dumps(data))
    assert cli_main(["verify", str(tmp_path / "d")]) == 2  # a damaged manifest: one line naming the field
    assert "'shards[2].sha256' must be 64 lowercase hex digits" in capsys.readouterr().err


def test_a_data_set_going_bad_mid_run_shows_in_log_txt_every_tick(digits16, tmp_path):
    """The per-sample warnings stop after 10 per stream; after that log.txt still gets one summary line per
    tick with the running count and the last reason, and the count matches Data/skipped in stats.jsonl."""
    import shutil

    import webdataset as wds

    shutil.copytree(digits16, tmp_path / "d")
    for shard in sorted((tmp_path / "d").glob("shard-*.tar")):
        rows = list(wds.WebDataset(str(shard), shardshuffle=False))
        with wds.TarWriter(str(shard)) as writer:
            for i, row in enumerate(rows):  # every third image damaged, all through the data set
                writer.write({"__key__": row["__key__"], "cls": row["cls"],
                              "png": b"\x89PNG damaged" if i % 3 == 0 else row["png"]})
    run_dir = tmp_path / "r"
    run(tiny_config(tmp_path / "d", train={"kimg": 0.16}, log={"tick_kimg": 0.032, "snapshot_kimg": 0.16}),
        run_dir)
    log_lines = (run_dir / "log.txt").read_text().splitlines()
    per_sample = [line for line in log_lines if "skipped corrupt sample" in line]
    summaries = [line for line in log_lines if "corrupt samples skipped so far" in line]
    assert len(per_sample) == 20  # the reals grid's stream and the training stream: ten each, then silence
    assert len(summaries) == 5  # one per tick: 0.16 kimg / 0.032
    counts = [int(line.split("data: ")[1].split()[0]) for line in summaries]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert all("last: " in line and ".tar: cannot identify image file" in line for line in summaries)
    assert not any(" at 0x" in line for line in summaries + per_sample)
    skipped = [_strict_json(line)["Data/skipped"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert skipped[-1] == counts[-1] > 10


MANIFEST_DAMAGE = {
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe", "not UTF-8"),
    "a list": (b"[1, 2]", "expected a JSON object"),
    "no shards": (json.dumps({"format": "gantrain-shards/1", "num_images": 1, "resolution": 16, "channels": 1,
                              "num_classes": 0, "class_names": [], "image_format": "png"}).encode(), "'shards'"),
    "bad int": (None, "'resolution'"),
    "shard entry": (None, "'shards[0]"),
}


@pytest.mark.parametrize("case", MANIFEST_DAMAGE)
def test_a_damaged_manifest_is_one_line_naming_the_file_and_field(digits16, tmp_path, case):
    import shutil

    from gantrain.data.stream import DataError, read_manifest

    shutil.copytree(digits16, tmp_path / "d")
    path = tmp_path / "d" / "manifest.json"
    raw, culprit = MANIFEST_DAMAGE[case]
    if raw is None:
        data = json.loads(path.read_text())
        if case == "bad int":
            data["resolution"] = "sixteen"
        else:
            data["shards"][0] = ["shard-000000.tar", 200]
        raw = json.dumps(data).encode()
    path.write_bytes(raw)
    with pytest.raises(DataError) as info:
        read_manifest(tmp_path / "d")
    assert "\n" not in str(info.value) and str(path) in str(info.value) and culprit in str(info.value)


def test_data_path_pointing_at_a_file_is_one_line(digits16):
    from gantrain.data.stream import DataError, read_manifest

    with pytest.raises(DataError, match="must be a directory"):  # a shard, say (a manifest .json is fine)
        read_manifest(digits16 / "shard-000000.tar")
    assert read_manifest(digits16 / "manifest.json").num_images == 1797


# ---- run directory ------------------------------------------------------------------------------------
def test_resume_auto_refuses_a_run_dir_whose_checkpoints_are_all_damaged(digits16, tmp_path):
    cfg = tiny_config(digits16, log={"snapshot_kimg": 0.032, "keep": 2})
    run(cfg, tmp_path)
    damaged = checkpoint.list_checkpoints(tmp_path)
    for path in damaged:
        path.write_bytes(path.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in damaged}
    with pytest.raises(checkpoint.CheckpointError) as info:
        run(cfg, tmp_path, resume="auto")
    assert "\n" not in str(info.value) and all(p.name in str(info.value) for p in damaged)
    assert {p: p.read_bytes() for p in damaged} == before  # nothing overwritten


def test_stale_temps_are_removed_and_a_missing_export_is_written_on_resume(digits16, tmp_path):
    import os

    run(tiny_config(digits16, train={"kimg": 0.032}), tmp_path)
    latest = checkpoint.list_checkpoints(tmp_path)[-1]
    export = tmp_path / checkpoint.export_name(32)
    export.unlink()  # killed between the checkpoint's rename and the export's
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = [tmp_path / f".checkpoint-0000000048.pt.tmp-{dead}", tmp_path / f".config.yaml.tmp-{dead}",
             tmp_path / ".tmpa1b2c3"]
    for path in stale:
        path.write_bytes(b"x" * 100)
    alive = tmp_path / f".fakes-0000000048.png.tmp-{os.getppid()}"  # a live writer's temp stays
    alive.write_bytes(b"x")
    run(tiny_config(digits16, train={"kimg": 0.048}), tmp_path, resume="auto")
    assert not any(p.exists() for p in stale) and alive.exists()
    assert export.exists() and latest.exists()


def test_a_second_trainer_on_the_same_run_dir_is_refused(digits16, tmp_path):
    from gantrain.atomic import LockedError, RunLock

    lock = RunLock(tmp_path)  # as a running trainer holds it
    with pytest.raises(LockedError, match=str(tmp_path)):
        run(tiny_config(digits16, train={"kimg": 0.016}), tmp_path)
    lock.release()
    run(tiny_config(digits16, train={"kimg": 0.016}), tmp_path)  # released: runs


def test_outputs_share_one_file_mode(digits16, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        run(tiny_config(digits16, train={"kimg": 0.016}), tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix in (".pt", ".safetensors", ".png", ".yaml")}
    assert set(modes.values()) == {"0o644"}, modes


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(digits16, tmp_path):
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        cfg = tiny_config(digits16, train={"kimg": 0.016}, log={"image_kimg": 1000})
        run(cfg, mount / "r")
        first = checkpoint.list_checkpoints(mount / "r")[-1]
        size = first.stat().st_size
        filler = mount / "filler"
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        filler.write_bytes(b"\0" * max(free - size // 2, 0))  # room for less than one more checkpoint
        with pytest.raises(checkpoint.CheckpointError) as info:
            run(tiny_config(digits16, train={"kimg": 0.032}, log={"image_kimg": 1000}), mount / "r", resume="auto")
        message = str(info.value)
        assert "\n" not in message and str(mount / "r") in message and "no space left" in message
        assert checkpoint.load(first)["counters"]["nimg"] == 16
        assert not [p for p in (mount / "r").iterdir() if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", "--lazy", str(mount)])  # log.txt may still be open in this process
