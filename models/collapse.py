"""When a training run has collapsed, and why.

GloRo training can fall into a constant classifier: the margins cannot keep up with eps, the net
shrinks its Lipschitz bound towards 0 and answers one class everywhere. It does not come back, and
it can happen in one epoch after hundreds of healthy ones (the from-scratch 4C3F run, epoch 251 of
500: training accuracy 95.4% in epoch 250, 34.9% in 251, 10.4% from 252 on). Such weights must
never overwrite the last sound checkpoint.
"""

from __future__ import annotations

import math

from models.evaluate import Evaluation, is_collapsed

# The trained weights have diverged when an epoch's training accuracy falls below this share of
# the epoch before's. The tested weights (a weight average, with --ema-decay) can lag by epochs.
DIVERGED_SHARE = 0.5
COLLAPSED_LIPSCHITZ = 1e-2


class TrainingCollapsed(RuntimeError):
    """Training stopped because an epoch collapsed; the checkpoint keeps the epoch before it."""


def collapse_reason(tested: Evaluation, record: dict, previous: dict | None) -> str | None:
    """Why this epoch's log ``record`` (with ``tested``, its test-set evaluation) is a collapse,
    given the record of the epoch before (None for a run's first epoch); None when it is not."""
    if not math.isfinite(record["loss"]):
        return f"the training loss is {record['loss']}"
    if is_collapsed(tested):
        return (f"clean test accuracy {100 * tested.clean_accuracy:.2f}% is at the largest class share "
                f"({100 * tested.majority_share():.2f}%)")
    if record["body_lipschitz"] < COLLAPSED_LIPSCHITZ:
        return f"the body's Lipschitz bound fell to {record['body_lipschitz']:.3g}"
    if previous is not None and record["train_accuracy"] < DIVERGED_SHARE * previous["train_accuracy"]:
        return (f"training accuracy fell from {100 * previous['train_accuracy']:.2f}% to "
                f"{100 * record['train_accuracy']:.2f}% in one epoch")
    return None
