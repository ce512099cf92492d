"""Certificates are computed in IEEE float32 even where training lets a GPU use TF32."""

from __future__ import annotations

import pytest
import torch

from models.numerics import exact_float32, set_tf32


@pytest.mark.unit
@pytest.mark.parametrize("before", [True, False])
def test_exact_float32_forbids_tf32_inside_and_restores_the_setting_after(before: bool) -> None:
    previous = set_tf32(before)
    try:
        with exact_float32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 is before and torch.backends.cuda.matmul.allow_tf32 is before
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
