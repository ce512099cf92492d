"""The certification head: radius, bottom logit and certified(eps) agree with the definitions."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.architectures import ARCHITECTURES, build
from models.gloro import SAFETY_FACTOR, BoundMode, RadiusHead, bottom_logit, head_distances
from models.losses import emma, gloro_ce, make_loss

pytestmark = pytest.mark.unit


def direct_radius(logits: torch.Tensor, K: torch.Tensor) -> tuple[list[int], list[float]]:
    """The definition, written out with loops: min over j != i of (f_i - f_j) / K_ij."""
    labels, radii = [], []
    for row in logits.tolist():
        i = max(range(len(row)), key=row.__getitem__)
        labels.append(i)
        radii.append(min((row[i] - row[j]) / float(K[i, j]) for j in range(len(row)) if j != i))
    return labels, radii


def test_head_distances_are_pairwise_row_distances():
    w = torch.randn(5, 7)
    d = head_distances(w)
    for i, j in itertools.product(range(5), range(5)):
        assert float(d[i, j]) == pytest.approx(float((w[i] - w[j]).norm()) if i != j else 0.0, abs=1e-6)


def test_wrapper_radius_equals_direct_computation_from_logits_and_K():
    torch.manual_seed(0)
    model = build("2c2f", (1, 28, 28), 10).eval()  # eval: the estimate's iterate stays put
    x = torch.rand(32, 1, 28, 28)
    for mode in BoundMode:
        K = model.lipschitz_matrix(mode).detach().float()
        cert = model.certify(x, eps=0.3, mode=mode)
        labels, radii = direct_radius(cert.logits.detach(), K)
        assert cert.label.tolist() == labels
        assert cert.radius.detach().tolist() == pytest.approx(radii, rel=1e-5, abs=1e-7)


def test_certified_means_radius_above_eps_and_matches_the_bottom_logit_rule():
    torch.manual_seed(1)
    model = build("2c2f", (1, 28, 28), 10)
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        for eps in (0.0, 0.01, 0.05, 0.2):
            cert = model.certify(x, eps=eps)
            top = cert.logits.amax(dim=1)
            assert torch.equal(cert.certified(eps), cert.radius > eps)
            # f_i > f_bot  <=>  radius > eps (up to ties at the boundary)
            away = (cert.radius - eps).abs() > 1e-5
            assert torch.equal((top > cert.bottom)[away], cert.certified(eps)[away])


def test_sound_mode_uses_the_safety_factor_and_estimate_does_not_exceed_it():
    torch.manual_seed(2)
    model = build("2c2f", (1, 28, 28), 10)
    for layer in model.body.layers:
        if hasattr(layer, "converge"):
            layer.converge()
    sound = float(model.body_lipschitz(BoundMode.SOUND))
    assert sound == pytest.approx(model.body.lipschitz_bound() * SAFETY_FACTOR)
    assert float(model.body_lipschitz(BoundMode.ESTIMATE).detach()) <= sound


def test_radius_head_never_picks_the_predicted_class_itself():
    logits = torch.tensor([[5.0, 1.0, 3.0]])
    K = torch.tensor([[0.0, 2.0, 1.0], [2.0, 0.0, 4.0], [1.0, 4.0, 0.0]])
    label, radius = RadiusHead(K)(logits)
    assert label.tolist() == [0]
    assert float(radius) == pytest.approx(min(4.0 / 2.0, 2.0 / 1.0))


def test_radius_head_takes_the_margin_allowance_off_every_margin_and_clamps_at_zero():
    K = torch.tensor([[0.0, 2.0, 1.0], [2.0, 0.0, 4.0], [1.0, 4.0, 0.0]])
    head = RadiusHead(K, margin_allowance=0.5)
    _, radius = head(torch.tensor([[5.0, 1.0, 3.0], [5.0, 4.9, 0.0], [1.0, 1.0, 1.0]]))
    assert radius[0].item() == pytest.approx(min((4.0 - 0.5) / 2.0, (2.0 - 0.5) / 1.0))
    assert radius[1].item() == 0.0  # a margin of 0.1 is under the allowance: no certificate, not a negative radius
    assert radius[2].item() == 0.0  # a tie
    head.set_margin_allowance(0.0)
    assert head(torch.tensor([[5.0, 1.0, 3.0]]))[1].item() == pytest.approx(2.0)
    for bad in (-1e-9, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="margin allowance must be finite and >= 0"):
            head.set_margin_allowance(bad)


def test_bottom_logit_is_the_best_raised_other_logit():
    logits = torch.tensor([[2.0, 1.0, 0.5]])
    K = torch.tensor([[0.0, 1.0, 4.0], [1.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    assert float(bottom_logit(logits, K, 0.5, torch.tensor([0]))) == pytest.approx(max(1.0 + 0.5, 0.5 + 2.0))


def test_emma_leaves_the_true_logit_and_raises_the_others():
    logits = torch.tensor([[3.0, 1.0, 0.0]], requires_grad=True)
    K = torch.ones(3, 3) - torch.eye(3)
    y = torch.tensor([0])
    expected = torch.nn.functional.cross_entropy(torch.tensor([[3.0, 1.5, 0.5]]), y)
    assert float(emma(logits, y, K, 0.5).detach()) == pytest.approx(float(expected))


def test_gloro_loss_exceeds_plain_cross_entropy_when_eps_is_positive():
    torch.manual_seed(3)
    logits, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    K = torch.rand(10, 10) + 0.5
    K.fill_diagonal_(0)
    plain = torch.nn.functional.cross_entropy(logits, y)
    assert float(gloro_ce(logits, y, K, 0.0)) <= float(gloro_ce(logits, y, K, 0.5))
    assert float(make_loss("trades", 2.0)(logits, y, K, 0.5)) >= float(plain)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_named_architecture_builds_and_certifies(name):
    shape = (1, 28, 28) if name in ("2c2f", "4c3f") else (3, 16, 16)  # small colour inputs keep it quick
    torch.manual_seed(0)
    model = build(name, shape, 10)
    cert = model.certify(torch.rand(2, *shape), eps=0.1)
    assert cert.logits.shape == (2, 10) and torch.isfinite(cert.radius).all()


def test_last_layer_normalisation_gives_unit_rows():
    model = build("2c2f", (1, 28, 28), 10, normalize_rows=True)
    assert torch.allclose(model.head_weight.norm(dim=1), torch.ones(10))
