import dataclasses
import gzip
import itertools
import io
import json
import logging
import struct
import zipfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from gantrain.data.pack import PackError, pack
from gantrain.data.sources import SourceError, open_source
from gantrain.data.stream import DataError, ShardStream, StreamLoader, read_manifest, samples


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _keys(manifest, **split):
    return [key for *_, key, _ in samples(manifest, seed=0, shuffle=True, infinite=False, **split)]


def test_pack_folder_skips_unreadable_and_writes_manifest(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "src" / cls / f"{i}.png")
    (tmp_path / "src" / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "src" / "notes.txt").write_text("ignored: not an image")
    manifest = pack(open_source(str(tmp_path / "src")), tmp_path / "out", 16, shard_size=4, progress=False)
    assert manifest["num_images"] == 10
    assert manifest["skipped"]["count"] == 1 and "broken.jpg" in manifest["skipped"]["examples"][0]
    assert manifest["class_names"] == ["cat", "dog"] and manifest["num_classes"] == 2
    assert manifest["channels"] == 3 and manifest["resolution"] == 16
    # 11 images in ranges of 4 of the seeded order: the range holding the broken one is a sample short
    assert sorted(s["count"] for s in manifest["shards"]) == [3, 3, 4]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk == manifest
    import hashlib
    for shard in manifest["shards"]:
        assert hashlib.sha256((tmp_path / "out" / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    m = read_manifest(tmp_path / "out")
    images = [img for img, *_ in samples(m, seed=0, shuffle=False, infinite=False)]
    assert len(images) == 10 and images[0].shape == (3, 16, 16) and images[0].dtype == torch.uint8


def test_pack_zip_npz_idx_sources(tmp_path):
    rng = np.random.default_rng(1)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        for i in range(6):
            z.writestr(f"top/{'ab'[i % 2]}/{i}.png", _png(rng.integers(0, 255, (8, 8), dtype=np.uint8)))
    m = pack(open_source(str(tmp_path / "a.zip")), tmp_path / "z", 8, progress=False)
    assert (m["num_images"], m["class_names"], m["channels"]) == (6, ["a", "b"], 1)

    np.savez(tmp_path / "a.npz", images=rng.integers(0, 255, (7, 3, 12, 12), dtype=np.uint8),
             labels=np.array([0, 1, 2, 0, 1, 2, 2]))
    m = pack(open_source(str(tmp_path / "a.npz")), tmp_path / "n", 8, progress=False)
    assert (m["num_images"], m["num_classes"], m["channels"]) == (7, 3, 3)

    images = rng.integers(0, 255, (9, 28, 28), dtype=np.uint8)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 9, 28, 28) + images.tobytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 9) + bytes([3] * 9))
    m = pack(open_source(str(tmp_path / "train-images-idx3-ubyte.gz")), tmp_path / "i", 32, progress=False)
    assert (m["num_images"], m["num_classes"], m["resolution"]) == (9, 4, 32)
    labels = {label for _, label, *_ in samples(read_manifest(tmp_path / "i"), seed=0, shuffle=False,
                                                infinite=False)}
    assert labels == {3}


def test_bundled_mnist5k(tmp_path):
    m = pack(open_source("mnist5k"), tmp_path / "m", 32, shard_size=2500, progress=False)
    assert (m["num_images"], m["num_classes"], m["channels"]) == (5000, 10, 1)


def test_pack_errors_name_the_culprit(tmp_path):
    with pytest.raises(SourceError, match="nowhere"):
        open_source(str(tmp_path / "nowhere"))
    (tmp_path / "bad-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(SourceError, match="bad-idx3-ubyte.*magic"):
        open_source(str(tmp_path / "bad-idx3-ubyte"))
    with pytest.raises(PackError, match="power of two"):
        pack(open_source("digits"), tmp_path / "d", 12, progress=False)
    pack(open_source("digits"), tmp_path / "d", 8, progress=False)
    with pytest.raises(PackError, match="already exists"):
        pack(open_source("digits"), tmp_path / "d", 8, progress=False)
    with pytest.raises(DataError, match="manifest.json"):
        read_manifest(tmp_path)


def test_split_two_ranks_two_workers_is_disjoint_and_complete(digits16):
    manifest = read_manifest(digits16)
    parts = [_keys(manifest, rank=r, world_size=2, worker=w, num_workers=2) for r in range(2) for w in range(2)]
    everything = [k for part in parts for k in part]
    assert all(parts) and len(everything) == len(set(everything)) == manifest.num_images == 1797
    # The same through real DataLoader worker processes, one simulated rank at a time.
    seen = []
    for rank in range(2):
        dataset = ShardStream(manifest, batch_size=50, seed=0, shuffle=True, infinite=False, rank=rank,
                              world_size=2, num_workers=2, cursors=[None, None])
        for batch in DataLoader(dataset, batch_size=None, num_workers=2):
            seen += batch["keys"]
    assert sorted(seen) == sorted(everything)


def test_epochs_reshuffle_and_streams_resume_exactly(digits16):
    manifest = read_manifest(digits16)
    loader = StreamLoader(manifest, batch_size=37, seed=5, num_workers=2)
    for _ in range(61):  # past an epoch boundary on both workers, stopping on worker 1's turn
        next(loader)
    state = loader.state_dict()
    assert state["turn"] == 1 and min(c[0] for c in state["cursors"]) >= 1
    expected = [next(loader) for _ in range(5)]
    loader.close()
    resumed = StreamLoader(manifest, batch_size=37, seed=5, num_workers=2, state=state)
    for (images, labels), (want_images, want_labels) in zip((next(resumed) for _ in range(5)), expected):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
    resumed.close()


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    good = _png(np.full((8, 8), 200, dtype=np.uint8))
    (tmp_path / "manifest.json").write_text(json.dumps({
        "format": "gantrain-shards/1", "num_images": 6, "resolution": 8, "channels": 1, "image_format": "png",
        "num_classes": 2, "class_names": ["a", "b"], "shards": [{"name": "shard-000000.tar", "count": 6}]}))
    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as writer:
        writer.write({"__key__": "0", "png": good, "cls": 0})
        writer.write({"__key__": "1", "png": b"\x89PNG garbage", "cls": 1})  # undecodable image
        writer.write({"__key__": "2", "png": good, "cls": 7})  # label outside the manifest's classes
        writer.write({"__key__": "3", "png": _png(np.zeros((4, 4), np.uint8)), "cls": 0})  # wrong size
        writer.write({"__key__": "4", "png": good, "cls": 1, "pyd": b"\x80\x04K\x01."})  # pickle: ignored
        writer.write({"__key__": "5", "cls": 1})  # no image
    manifest = read_manifest(tmp_path)
    kept = [(key, label) for _, label, key, _ in samples(manifest, seed=0, shuffle=False, infinite=False)]
    assert kept == [("0", 0), ("4", 1)]
    loader = StreamLoader(manifest, batch_size=4, seed=0, shuffle=False, num_workers=0)
    next(loader)  # good samples 0, 4, then the second epoch's 0, 4: seven bad ones passed on the way
    assert loader.skipped == 7
    loader.close()
    # Remembered in memory (data.memory_cache_gb), the skips are replayed and counted the same way.
    reading, cached = (StreamLoader(m, batch_size=4, seed=0, shuffle=False, num_workers=0)
                       for m in (manifest, _in_memory(manifest)))
    _same_batches(cached, reading, 5)
    assert cached.skipped == reading.skipped == 9 * 4 + 3  # 10 epochs of 2 good, 4 bad; the last stops at 4
    reading.close()
    cached.close()


def _in_memory(manifest, budget=1 << 30):
    return dataclasses.replace(manifest, access=dataclasses.replace(manifest.access, memory_cache_bytes=budget))


def _same_batches(a, b, n):
    for _ in range(n):
        (images, labels), (want_images, want_labels) = next(a), next(b)
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)


def test_memory_cache_gives_the_same_stream_and_reads_each_shard_once(digits16, tmp_path, caplog):
    """data.memory_cache_gb: from the second epoch on the stream comes from memory: the same batches and
    cursors as reading, even with the shard files gone; a budget that holds a few shards caches those."""
    import shutil
    shutil.copytree(digits16, tmp_path / "d")
    plain = read_manifest(tmp_path / "d")
    reading = StreamLoader(plain, batch_size=50, seed=1, num_workers=0)
    expected = [next(reading) for _ in range(108)]  # 3 epochs of 1,797 (9 shards)
    want_state = reading.state_dict()
    reading.close()
    cached = StreamLoader(_in_memory(plain), batch_size=50, seed=1, num_workers=0)
    _same_batches(cached, iter(expected[:36]), 36)  # the first epoch is read (and remembered)
    for shard in (tmp_path / "d").glob("*.tar"):
        shard.unlink()
    _same_batches(cached, iter(expected[36:]), 72)
    assert cached.state_dict() == want_state and cached.lost_shards == 0
    cached.close()
    # A resume starts with an empty cache and is still exact; a budget for ~3 of the 9 shards
    # (200 x 16x16 bytes + per-sample overhead each) fills, says so once, and the rest is read on every visit.
    shutil.copytree(digits16, tmp_path / "d", dirs_exist_ok=True)
    caplog.set_level(logging.INFO, logger="gantrain.data.stream")
    resumed = StreamLoader(_in_memory(plain, 3 * 200 * (256 + 256 + 8)), batch_size=50, seed=1, num_workers=0,
                           state=expected_state(plain))
    _same_batches(resumed, iter(expected[20:]), 88)
    resumed.close()
    spent = [r for r in caplog.records if "memory_cache_gb is spent" in r.getMessage()]
    assert len(spent) == 1 and "in 3 shards" in spent[0].getMessage()
    # Workers each keep their own cache; the stream is the same.
    two = [StreamLoader(m, batch_size=50, seed=1, num_workers=2) for m in (plain, _in_memory(plain))]
    _same_batches(two[1], two[0], 80)
    for loader in two:
        loader.close()


def expected_state(manifest):
    """The state after 20 batches of the plain stream (the resume point of the test above)."""
    loader = StreamLoader(manifest, batch_size=50, seed=1, num_workers=0)
    for _ in range(20):
        next(loader)
    state = loader.state_dict()
    loader.close()
    return state


def test_damaged_shard_keeps_the_samples_before_the_damage(digits16, tmp_path):
    import shutil
    shutil.copytree(digits16, tmp_path / "d")
    shard = tmp_path / "d" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    manifest = read_manifest(tmp_path / "d")
    keys = [key for *_, key, _ in samples(manifest, seed=0, shuffle=False, infinite=False, num_workers=9)]
    assert 50 < len(keys) < 200


def test_too_many_workers_for_the_shards_is_a_clear_error(digits16):
    with pytest.raises(DataError, match="9 shards cannot feed 1 ranks x 10 workers"):
        StreamLoader(read_manifest(digits16), batch_size=4, seed=0, num_workers=10)


def test_resampled_stream_draws_with_replacement_and_resumes(digits16):
    manifest = read_manifest(digits16)

    def shards_in_first_epoch_worth(sampling):  # pack writes keys in order, 200 per shard
        stream = samples(manifest, seed=1, shuffle=True, infinite=True, sampling=sampling)
        return {int(k) // 200 for *_, k, _ in itertools.islice(stream, 1797)}

    assert shards_in_first_epoch_worth("epochs") == set(range(9))
    assert len(shards_in_first_epoch_worth("resampled")) < 9  # with replacement: some shard came twice
    loader = StreamLoader(manifest, batch_size=50, seed=1, num_workers=2, sampling="resampled")
    for _ in range(9):
        next(loader)
    state = loader.state_dict()
    expected = [next(loader)[0] for _ in range(4)]
    loader.close()
    resumed = StreamLoader(manifest, batch_size=50, seed=1, num_workers=2, sampling="resampled", state=state)
    assert all(torch.equal(next(resumed)[0], want) for want in expected)
    resumed.close()


def test_pack_workers_give_the_same_shards_and_an_interrupted_pack_resumes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    pack(open_source("digits"), one, 16, shard_size=300, progress=False)
    pack(open_source("digits"), two, 16, shard_size=300, progress=False, workers=2)
    assert (one / "manifest.json").read_bytes() == (two / "manifest.json").read_bytes()  # sha256 per shard inside
    assert not list(two.glob(".*"))  # the resume records go once the manifest is written

    source = open_source("digits")
    loads = []
    real = source.loader

    def dying(index):  # the pack is killed while it writes the third shard
        loads.append(index)
        if len(loads) == 700:
            raise KeyboardInterrupt
        return real(index)

    source.loader = dying
    with pytest.raises(KeyboardInterrupt):
        pack(source, tmp_path / "resumed", 16, shard_size=300, progress=False)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed").glob("shard-*.tar")}
    assert sorted(kept) == ["shard-000000.tar", "shard-000001.tar"]  # the torn third never appears
    source.loader, loads[:] = real, []
    pack(source, tmp_path / "resumed", 16, shard_size=300, progress=False)
    assert (tmp_path / "resumed" / "manifest.json").read_bytes() == (one / "manifest.json").read_bytes()
    assert all((tmp_path / "resumed" / name).stat().st_mtime_ns == t for name, t in kept.items())
    with pytest.raises(PackError, match="already exists"):
        pack(source, tmp_path / "resumed", 16, shard_size=300, progress=False)
