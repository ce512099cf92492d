"""IEEE float32 arithmetic on GPUs, which certificates assume.

The export's safety factor (DESIGN section 2) covers float32 rounding in the margin. On Ampere and
later GPUs torch lets cuDNN convolutions run in TF32 by default, which keeps 10 mantissa bits instead
of 23: errors about a thousand times larger than the factor buys. Training may use TF32; anything
that reports or serves a certificate must not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def set_tf32(allowed: bool) -> tuple[bool, bool]:
    """Allow or forbid TF32 in cuDNN convolutions and CUDA matmuls; returns the previous (cudnn, matmul)."""
    previous = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed
    return previous


@contextmanager
def exact_float32() -> Iterator[None]:
    """Full float32 inside the block (for evaluation between training epochs), the old setting after."""
    cudnn, matmul = set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cuda.matmul.allow_tf32 = matmul


def _flushing() -> bool:
    """Whether this thread's CPU arithmetic flushes denormals now (torch has no getter for it)."""
    return float(torch.tensor([1e-39]) * 1.0) == 0.0


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Treat denormal floats (below 1.2e-38) as zero in CPU arithmetic inside the block: for training.

    Once a loss saturates, its gradients can fall into the denormal range, where x86 arithmetic is
    many times slower: on a 4C3F at epoch 78 of a run from scratch, a training step took 1.09 s
    with them and 0.17 s with them flushed (2 threads; `python -m bench.denormals` measures a
    checkpoint). Enter it before torch starts its worker threads, which inherit the setting from
    the thread that creates them. The calling thread gets its old setting back after the block,
    so a process that goes on (a test session, say) keeps IEEE subnormals there. No certificate
    depends on values that small.
    """
    before = _flushing()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
