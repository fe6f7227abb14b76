"""Sample-quality metrics computed from feature vectors (and class logits where an extractor has them).

The Fréchet distance and KID's polynomial-kernel MMD are torchmetrics' own functions; this module only
turns feature sets into their inputs (float64 moments, seeded KID subsets). Inception Score and the
k-NN manifold metrics (precision/recall of Kynkäänniemi et al. 2019, density/coverage of Naeem et al.
2020) are written out here because torchmetrics has no feature-level version of them.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import poly_mmd

from gantrain.metrics import METRICS


def moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance in float64 (what FID is defined on)."""
    x = features.double()
    mu = x.mean(0)
    centered = x - mu
    return mu, centered.T @ centered / (len(x) - 1)


def fid_from_moments(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    return float(_compute_fid(mu1.double(), sigma1.double(), mu2.double(), sigma2.double()))


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    return fid_from_moments(*moments(real), *moments(fake))


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel, mean and std over random subsets (Binkowski et al.)."""
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set (got {len(real)} real, {len(fake)} fake)")
    gen = torch.Generator().manual_seed(seed)
    real, fake = real.double(), fake.double()
    values = torch.stack([poly_mmd(real[torch.randperm(len(real), generator=gen)[:size]],
                                   fake[torch.randperm(len(fake), generator=gen)[:size]])
                          for _ in range(subsets)])
    return float(values.mean()), float(values.std(unbiased=False))


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))), mean and std over SPLITS consecutive chunks (Salimans et al. 2016)."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    scores = []
    for chunk in log_p.chunk(splits):
        log_marginal = torch.logsumexp(chunk, dim=0) - math.log(len(chunk))
        kl = (chunk.exp() * (chunk - log_marginal)).sum(1).mean()
        scores.append(kl.exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))


def _distances(a: torch.Tensor, b: torch.Tensor, block: int = 4096) -> torch.Tensor:
    return torch.cat([torch.cdist(a[i:i + block], b) for i in range(0, len(a), block)])


def _radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every point to its k-th nearest neighbour in its own set (itself excluded)."""
    if len(x) <= k:
        raise ValueError(f"k-NN manifolds with k={k} need more than {k} samples per set (got {len(x)})")
    return _distances(x, x).kthvalue(k + 1, dim=1).values


def manifold_metrics(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Precision, recall (k-NN balls of the other set contain the sample), density and coverage."""
    real, fake = real.double(), fake.double()
    real_radii, fake_radii = _radii(real, k), _radii(fake, k)
    d = _distances(real, fake)  # [real, fake]
    inside_real = d <= real_radii[:, None]  # fake j inside real i's ball
    return {
        "precision": float(inside_real.any(0).double().mean()),
        "recall": float((d <= fake_radii[None, :]).any(1).double().mean()),
        "density": float(inside_real.double().sum(0).mean() / k),
        "coverage": float((d.min(1).values <= real_radii).double().mean()),
    }


# The sample counts below which a figure is not stable enough to compare, and why (printed with the warning).
KID_STABLE_SUBSET = 1000  # Binkowski et al. and the reference implementations draw subsets of 1,000
MANIFOLD_STABLE = 1000  # k-NN radii (k = 3) from fewer samples per set shift precision/recall/density/coverage
IS_SPLITS = 10


def kid_subset(num_real: int, num_fake: int, subset_size: int) -> int:
    return min(subset_size, num_real, num_fake)


def kid_std_meaningful(num_real: int, num_fake: int, subset_size: int) -> bool:
    """False when one subset holds every sample of a set: the subsets then differ on one side only (or not
    at all), so their spread says nothing about the uncertainty of KID."""
    return kid_subset(num_real, num_fake, subset_size) < min(num_real, num_fake)


def caveats(names: list[str], num_real: int, num_fake: int, feature_dim: int, num_logits: int | None, *,
            kid_subset_size: int = 1000, k: int = 3) -> list[str]:
    """One line per metric of NAMES whose sample counts are below what it needs to be stable, with the rule."""
    out = []
    fewest = min(num_real, num_fake)
    if "fid" in names and fewest < 2 * feature_dim:
        out.append(f"fid: {fewest} samples in a {feature_dim}-d feature space is too few for a stable figure "
                   f"(rule: real and fake counts >= 2 x feature dim = {2 * feature_dim}; FID is biased upward "
                   "at small counts, published FIDs use 50,000 fakes: compare figures at equal counts only)")
    if "kid" in names:
        size = kid_subset(num_real, num_fake, kid_subset_size)
        meaningful = kid_std_meaningful(num_real, num_fake, kid_subset_size)
        if size < KID_STABLE_SUBSET:
            out.append(f"kid: subsets of {size} samples (rule: >= {KID_STABLE_SUBSET} real and fake, the "
                       "reference's subset size)" + ("; kid_std is the figure's uncertainty" if meaningful else ""))
        if not meaningful:
            out.append(f"kid_std: not meaningful, one subset of {size} covers all {fewest} "
                       f"{'fake' if num_fake <= num_real else 'real'} samples (rule: eval.kid_subset_size < "
                       "real and fake counts); not reported")
    if "is" in names and num_logits and num_fake // IS_SPLITS < 10 * num_logits:
        out.append(f"is: {num_fake // IS_SPLITS} fakes per split over {num_logits} classes (rule: >= 10 per class "
                   f"in each of the {IS_SPLITS} splits, {IS_SPLITS * 10 * num_logits} fakes; the convention is "
                   "50,000)")
    if ("pr" in names or "dc" in names) and fewest < MANIFOLD_STABLE:
        out.append(f"pr/dc: k-NN radii (k={k}) from {fewest} samples per set (rule: >= {MANIFOLD_STABLE} real "
                   "and fake; precision, recall, density and coverage shift with the count)")
    return out


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """GAN-test accuracy (Shmelkov et al. 2018, "How good is my GAN?"): the fraction of conditional samples
    that a classifier trained on the real data assigns to the class they were generated for. Near 1: every
    class is rendered recognizably; 1 / classes: the labels are ignored. It says nothing about diversity
    (a G making one perfect image per class scores 1): read it beside FID and recall."""
    return float((logits.argmax(dim=1) == labels.to(logits.device)).float().mean())


def compute(names: list[str], real: torch.Tensor, fake: torch.Tensor, fake_logits: torch.Tensor | None, *,
            kid_subsets: int = 100, kid_subset_size: int = 1000, k: int = 3, seed: int = 0,
            fake_labels: torch.Tensor | None = None) -> dict[str, float]:
    """The figures of every metric in NAMES (keys of METRICS) from real and fake feature sets (FAKE_LABELS:
    the classes the fakes were generated for, conditional generators only)."""
    out: dict[str, float] = {}
    manifold = None
    for name in names:
        if name == "fid":
            out["fid"] = fid(real, fake)
        elif name == "kid":
            out["kid"], std = kid(real, fake, kid_subsets, kid_subset_size, seed)
            if kid_std_meaningful(len(real), len(fake), kid_subset_size):
                out["kid_std"] = std
        elif name == "is":
            if fake_logits is None:
                raise ValueError("the Inception Score needs class logits; this feature extractor has none")
            out["is"], out["is_std"] = inception_score(fake_logits)
        elif name == "acc":
            if fake_logits is None or fake_labels is None:
                raise ValueError("acc needs a conditional generator and a classifier extractor with class logits")
            out["acc"] = class_accuracy(fake_logits, fake_labels)
        elif name in ("pr", "dc"):
            manifold = manifold or manifold_metrics(real, fake, k)
            out.update({key: manifold[key] for key in METRICS[name]})
        else:
            raise ValueError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")
    return out
