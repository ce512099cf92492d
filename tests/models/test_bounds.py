"""The sound bound is an upper bound on the real operator's norm, and tight where DESIGN says."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import bounds
from models.layers import (BoundedSequential, Conv2d, Flatten, InputNormalization, Linear, MinMax, ReLU,
                           ResidualConv, UnboundedLayerError, set_power_steps)

pytestmark = pytest.mark.unit


def operator_norm(layer: nn.Module, input_shape: tuple[int, ...], iterations: int = 400) -> float:
    """Long power iteration on the layer's real linear part, x -> layer(x) - layer(0), via autograd."""
    layer = layer.double()
    zero = torch.zeros(1, *input_shape, dtype=torch.float64)
    offset = layer(zero).detach()

    def linear(x: torch.Tensor) -> torch.Tensor:
        return layer(x) - offset

    x = torch.randn(1, *input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x /= x.norm()
    for _ in range(iterations):
        x.requires_grad_(True)
        y = linear(x)
        (x,) = torch.autograd.grad(y, x, grad_outputs=y.detach())  # A^T A x
        x = x.detach() / x.norm()
    with torch.no_grad():
        return float(linear(x).norm())


def test_orthogonal_matrix_has_norm_one():
    q, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))
    assert bounds.dense_bound(q) == pytest.approx(1.0, abs=1e-12)


def test_two_by_two_average_pooling_has_norm_one_half():
    kernel = torch.full((1, 1, 2, 2), 0.25)
    assert bounds.conv_bound(kernel, stride=2, padded_size=(8, 8)) == pytest.approx(0.5, abs=1e-12)


def test_identity_convolution_has_norm_one():
    kernel = torch.zeros(3, 3, 3, 3)
    kernel[range(3), range(3), 1, 1] = 1.0
    assert bounds.conv_bound(kernel, stride=1, padded_size=(10, 10)) == pytest.approx(1.0, abs=1e-12)


def test_space_to_depth_is_a_rearrangement_of_the_kernel():
    w = torch.randn(4, 2, 4, 4)
    w2 = bounds.space_to_depth_kernel(w, 2)
    assert w2.shape == (4, 8, 2, 2)
    assert sorted(w2.flatten().tolist()) == sorted(w.flatten().tolist())


CONV_CASES = [
    # (c_in, c_out, kernel, stride, size)
    (1, 16, 4, 2, 28), (16, 32, 4, 2, 14), (32, 32, 4, 2, 16), (3, 8, 4, 2, 32), (3, 8, 3, 1, 12), (8, 8, 3, 1, 9), (4, 6, 5, 2, 11),
    (2, 4, 3, 2, 10), (5, 3, 4, 2, 7), (3, 5, 3, 3, 12), (6, 6, 1, 1, 5), (2, 2, 4, 1, 6),
]


@pytest.mark.parametrize("c_in,c_out,kernel,stride,size", CONV_CASES)
def test_conv_bound_is_above_the_real_operator_norm(c_in, c_out, kernel, stride, size):
    torch.manual_seed(c_in * 100 + c_out * 10 + kernel + stride)
    layer = Conv2d(c_in, c_out, kernel, stride=stride)
    layer.bind((c_in, size, size))
    bound = layer.lipschitz_bound()
    truth = operator_norm(layer, (c_in, size, size))
    assert bound >= truth * (1 - 1e-9)
    if stride > 1 and size >= 10:
        # On tiny inputs the real operator sits well below the torus norm; at the sizes networks
        # use, space-to-depth keeps the bound tight.
        assert bound <= 1.05 * truth, f"strided bound {bound} is more than 5% above {truth}"


@pytest.mark.parametrize("c_in,c_out,kernel,stride,size", CONV_CASES)
def test_conv_forward_is_the_bounded_operator_pad_then_valid_convolution(c_in, c_out, kernel, stride, size):
    """The forward pads inside the convolution where it can (so the export has no Pad node); the
    bound is for padding first, then a valid convolution: both must be the same function."""
    torch.manual_seed(size)
    layer = Conv2d(c_in, c_out, kernel, stride=stride)
    layer.bind((c_in, size, size))
    x = torch.randn(3, c_in, size, size)
    with torch.no_grad():
        padded_first = F.conv2d(F.pad(x, layer.pad), layer.conv.weight, layer.conv.bias, stride=stride)
        torch.testing.assert_close(layer(x), padded_first)


@pytest.mark.parametrize("n_in,n_out", [(10, 3), (50, 50), (784, 100), (7, 200)])
def test_dense_bound_equals_the_operator_norm(n_in, n_out):
    torch.manual_seed(n_in + n_out)
    layer = Linear(n_in, n_out)
    assert layer.lipschitz_bound() == pytest.approx(operator_norm(layer, (n_in,)), rel=1e-6)


@pytest.mark.parametrize("channels,size", [(4, 8), (8, 6)])
def test_residual_bound_is_above_the_real_block_and_below_one_plus_conv(channels, size):
    torch.manual_seed(channels)
    block = ResidualConv(channels, 3)
    nn.init.normal_(block.conv.weight, std=0.3)
    block.bind((channels, size, size))
    truth = operator_norm(block, (channels, size, size))
    conv_only = bounds.conv_bound(block.conv.weight, 1, block.padded_size)
    assert truth * (1 - 1e-9) <= block.lipschitz_bound() <= 1 + conv_only + 1e-9


def test_input_normalisation_costs_one_over_the_smallest_std():
    layer = InputNormalization([0.5, 0.4, 0.3], [0.2, 0.25, 0.5])
    assert layer.lipschitz_bound() == pytest.approx(5.0)
    assert operator_norm(layer, (3, 4, 4)) == pytest.approx(5.0, rel=1e-6)


def test_activations_are_one_lipschitz_and_minmax_sorts_pairs():
    x = torch.tensor([[3.0, -1.0, 2.0, 5.0]])
    assert MinMax()(x).tolist() == [[2.0, -1.0, 3.0, 5.0]]
    for act in (MinMax(), ReLU(), Flatten()):
        assert act.lipschitz_bound() == 1.0
    a, b = torch.randn(100, 8), torch.randn(100, 8)
    assert ((MinMax()(a) - MinMax()(b)).norm(dim=1) <= (a - b).norm(dim=1) + 1e-6).all()


@pytest.mark.parametrize("shape", [(16, 8), (4, 6, 5, 5)])
def test_minmax_training_path_matches_the_exported_one_in_values_and_gradients(shape):
    # Training uses a hand-written backward (speed); eval and export use minimum/maximum.
    torch.manual_seed(0)
    x, upstream = torch.randn(*shape, requires_grad=True), torch.randn(*shape)
    outputs, gradients = [], []
    for training in (True, False):
        layer = MinMax().train(training)
        y = layer(x)
        (y * upstream).sum().backward()
        outputs.append(y.detach())
        gradients.append(x.grad.clone())
        x.grad = None
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(gradients[0], gradients[1])


def test_power_iteration_estimate_approaches_the_bound_from_below():
    torch.manual_seed(0)
    layer = Conv2d(3, 8, 3)
    layer.bind((3, 28, 28))
    converged = layer.converge(tol=1e-10, max_steps=20000)
    assert converged <= layer.lipschitz_bound() * (1 + 1e-9)
    assert converged >= 0.98 * layer.lipschitz_bound()


def test_a_training_estimate_takes_the_configured_number_of_power_steps():
    torch.manual_seed(0)
    net = BoundedSequential(Conv2d(1, 4, 3), MinMax(), Flatten(), Linear(4 * 8 * 8, 10), input_shape=(1, 8, 8))
    twin = BoundedSequential(Conv2d(1, 4, 3), MinMax(), Flatten(), Linear(4 * 8 * 8, 10), input_shape=(1, 8, 8))
    twin.load_state_dict(net.state_dict())
    set_power_steps(net, 5)
    net.train()
    net.lipschitz_estimate()
    for layer in (twin.layers[0], twin.layers[3]):
        layer.power_step(5)
    for mine, expected in ((net.layers[0], twin.layers[0]), (net.layers[3], twin.layers[3])):
        assert mine.power_steps == 5
        assert torch.allclose(mine.u, expected.u, atol=1e-6)


def test_more_power_steps_per_estimate_bring_it_closer_to_the_bound():
    torch.manual_seed(0)
    layer = Linear(64, 64)
    layer.train()
    bound = layer.lipschitz_bound()
    one = float(layer.lipschitz_estimate().detach())
    set_power_steps(layer, 20)
    twenty = float(layer.lipschitz_estimate().detach())
    assert one < twenty <= bound * (1 + 1e-6)


@pytest.mark.parametrize("steps", [0, -1])
def test_power_steps_below_one_are_refused(steps):
    with pytest.raises(ValueError, match="at least 1"):
        set_power_steps(Linear(3, 2), steps)


def test_sequential_bound_is_the_product_and_is_sound_end_to_end():
    torch.manual_seed(0)
    net = BoundedSequential(Conv2d(1, 4, 4, stride=2), MinMax(), Flatten(), Linear(4 * 7 * 7, 10),
                            input_shape=(1, 14, 14))
    layer_bounds = [layer.lipschitz_bound() for layer in net.layers]
    assert net.lipschitz_bound() == pytest.approx(math.prod(layer_bounds))
    x, y = torch.rand(64, 1, 14, 14), torch.rand(64, 1, 14, 14)
    with torch.no_grad():
        ratios = (net(x) - net(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratios.max()) <= net.lipschitz_bound()


def test_a_layer_with_no_known_bound_is_an_error_not_one():
    with pytest.raises(UnboundedLayerError, match="Tanh"):
        BoundedSequential(Flatten(), nn.Tanh(), input_shape=(1, 4, 4))


def test_bounds_do_not_depend_on_train_or_eval_mode():
    torch.manual_seed(0)
    layer = Conv2d(2, 4, 3)
    layer.bind((2, 8, 8))
    layer.train()
    in_train = layer.lipschitz_bound()
    layer.eval()
    assert layer.lipschitz_bound() == in_train
