"""Sample-quality evaluation: feature extractors, metrics, distributed evaluation, pictures."""

# Metric names accepted in eval.metrics / --metrics, and what each one reports.
METRICS = {
    "fid": ("fid",),
    "kid": ("kid", "kid_std"),
    "is": ("is", "is_std"),
    "pr": ("precision", "recall"),
    "dc": ("density", "coverage"),
    "acc": ("acc",),  # conditional G: how often the classifier extractor names the class a sample was made for
}
# Direction of every reported figure, for "best checkpoint" bookkeeping.
HIGHER_IS_BETTER = {"fid": False, "kid": False, "is": True, "precision": True, "recall": True, "density": True,
                    "coverage": True, "acc": True}
