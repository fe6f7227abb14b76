"""Tolerances for the equivalence tests (batch splits, ranks, engines == one process): derived, not tuned."""

# Why the comparisons hold on any machine. Splitting a batch over ranks or micro-batches changes
# only the order in which float32 gradients are summed: per element at most GRAD_ATOL + GRAD_RTOL * |g|
# (a few ulp of sums of ~100 terms). Adam turns that into a weight difference through its update
# lr * m / (sqrt(v) + eps): m and sqrt(v) are 1-Lipschitz in the gradients and |m| <= sqrt(v), so the
# update moves by at most lr * 2 * (GRAD_ATOL / eps + GRAD_RTOL) per step. With Adam's default eps of
# 1e-8 that bound is useless (a gradient at noise level can flip a whole lr-sized step, which is what a
# fixed atol once missed on another machine), so these runs use eps = ADAM_EPS. On top, each optimizer
# step rounds the stored float32 weight: at most one ulp (2^-23 |w|) of difference per step.
GRAD_ATOL, GRAD_RTOL = 1e-7, 1e-5
ADAM_EPS = 1e-3
LR = 2e-4  # the config default both networks train with here (D's lazy-R1 phases scale it down)
EQUIVALENCE = [f"optim.eps={ADAM_EPS}"]
R1_INTERVAL = 2  # ddp_worker.py's lazy R1: one extra D step every 2


def tolerance(steps: int) -> tuple[float, float]:
    """(atol, rtol) for weights after `steps` G steps; D takes steps + steps // R1_INTERVAL optimizer steps."""
    updates = steps + steps // R1_INTERVAL
    return updates * 2 * LR * (GRAD_ATOL / ADAM_EPS + GRAD_RTOL), updates * 2.0 ** -23
