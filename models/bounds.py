"""Sound upper bounds on l2 operator norms, computed in float64.

Power iteration approaches a spectral norm from below, so it can certify points that are not
robust. Everything here is an upper bound by construction (DESIGN section 2):

- dense: the exact largest singular value;
- convolution: the operator is a restriction of a circular convolution on an N x N torus, whose
  norm is the largest singular value of the kernel's 2-D DFT over the N x N frequencies;
- strided convolution: space-to-depth turns it into a stride-1 convolution on the s*s polyphase
  components of the input (a permutation), then the FFT bound applies.
"""

from __future__ import annotations

import math

import torch


def dense_bound(weight: torch.Tensor) -> float:
    """Exact largest singular value of a dense weight [out, in], in float64."""
    w = weight.detach().to(torch.float64).cpu()
    return float(torch.linalg.matrix_norm(w, ord=2))


def space_to_depth_kernel(weight: torch.Tensor, stride: int) -> torch.Tensor:
    """Rewrite a stride-s kernel [co, ci, kh, kw] as a stride-1 kernel on polyphase inputs.

    W'[o, (c, a, b), p, q] = W[o, c, p*s + a, q*s + b], the kernel zero-padded to a multiple of s.
    """
    if stride == 1:
        return weight
    co, ci, kh, kw = weight.shape
    th, tw = math.ceil(kh / stride), math.ceil(kw / stride)
    padded = torch.zeros(co, ci, th * stride, tw * stride, dtype=weight.dtype, device=weight.device)
    padded[:, :, :kh, :kw] = weight
    # [co, ci, p, a, q, b] -> [co, ci, a, b, p, q] -> [co, ci*s*s, p, q]
    phased = padded.reshape(co, ci, th, stride, tw, stride).permute(0, 1, 3, 5, 2, 4)
    return phased.reshape(co, ci * stride * stride, th, tw)


def conv_bound(weight: torch.Tensor, stride: int, padded_size: tuple[int, int]) -> float:
    """Sound bound on the norm of a zero-padded, strided 2-D convolution.

    ``padded_size`` is the spatial size of the input after zero padding (the padding itself is an
    isometric embedding and costs nothing).
    """
    kernel = space_to_depth_kernel(weight.detach().to(torch.float64).cpu(), stride)
    taps_h, taps_w = kernel.shape[-2:]
    # The polyphase input is ceil(n / s) wide; a torus at least that large (plus the kernel) holds
    # the valid convolution without wrap-around, so the linear operator is a restriction of it.
    n_h = math.ceil(padded_size[0] / stride) + taps_h - 1
    n_w = math.ceil(padded_size[1] / stride) + taps_w - 1
    spectrum = torch.fft.fft2(kernel, s=(n_h, n_w))  # [co, ci', n_h, n_w]
    per_frequency = spectrum.permute(2, 3, 0, 1)  # [n_h, n_w, co, ci']
    return float(torch.linalg.matrix_norm(per_frequency, ord=2).max())


def residual_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The kernel of x + conv(x): the identity added at the centre tap (odd kernels only)."""
    co, ci, kh, kw = weight.shape
    if co != ci or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"a residual convolution needs c_in == c_out and an odd kernel, got {tuple(weight.shape)}")
    kernel = weight.detach().to(torch.float64).clone()
    idx = torch.arange(co)
    kernel[idx, idx, kh // 2, kw // 2] += 1.0
    return kernel
