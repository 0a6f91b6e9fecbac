import pytest
import torch

from pmsm_exp.quant import PQA, make_activation


def test_levels_and_values_round_half_up():
    q = PQA(levels=4, alpha=-0.5, beta=1.0, threshold=4.0)  # θ = 1, levels -2..4
    z = torch.tensor([-9.0, -1.5, -0.5, 0.49, 0.5, 1.5, 2.5, 3.6, 9.0])
    assert q.quantized_levels(z).tolist() == [-2, -1, 0, 0, 1, 2, 3, 4, 4]
    assert torch.equal(q(z), q.quantized_levels(z) * 1.0)


def test_qcfs_is_alpha_zero():
    q = PQA(levels=8, alpha=0.0, beta=1.0, threshold=8.0)
    z = torch.linspace(-10, 10, 101)
    out = q(z)
    assert out.min() == 0 and out.max() == 8.0
    assert torch.equal(out, torch.clamp(torch.floor(z + 0.5), 0, 8))


def test_ste_gradient_inside_range_only_and_threshold_learns():
    q = PQA(levels=8, alpha=-0.25, beta=1.0, threshold=8.0)  # θ = 1, range [-2, 8]
    z = torch.tensor([-5.0, -1.2, 0.3, 4.7, 7.9, 12.0], requires_grad=True)
    q(z).sum().backward()
    assert z.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert q.threshold.grad is not None and q.threshold.grad.abs() > 0


def test_threshold_gradient_is_level_in_clipped_region():
    q = PQA(levels=8, alpha=-0.25, beta=1.0, threshold=8.0)
    q(torch.tensor([100.0])).sum().backward()
    assert q.threshold.grad.item() == pytest.approx(1.0)  # out = βL·λ/L = λ  -> d/dλ = 1


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(levels=0), "L=0"),
    (dict(levels=-4), "L=-4"),
    (dict(levels=2.5), "L=2.5"),
    (dict(beta=0.0), "beta=0.0"),
    (dict(alpha=0.25), "alpha=0.25"),
    (dict(levels=8, alpha=-0.3), "alpha*L"),
    (dict(levels=8, beta=0.3), "beta*L"),
    (dict(threshold=0.0), "threshold=0.0"),
])
def test_bad_parameters_raise_value_error_naming_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("*", r"\*")):
        PQA(**kwargs)


def test_activation_factory():
    assert isinstance(make_activation("relu")(), torch.nn.ReLU)
    a, b = make_activation("pqa")(), make_activation("pqa")()
    assert a is not b and a.threshold is not b.threshold
    with pytest.raises(ValueError, match="'gelu'.*valid"):
        make_activation("gelu")
