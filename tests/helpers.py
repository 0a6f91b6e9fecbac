"""Shared builders for tests: randomised quantized models."""
import torch
from torch import nn

from pmsm_exp.models import create_model
from pmsm_exp.quant import make_activation, pqa_layers


def randomize(model: nn.Module, generator: torch.Generator, threshold_range=(0.5, 4.0)) -> nn.Module:
    """Random BatchNorm statistics/affine and a different random λ per layer."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=generator)
            m.running_var.uniform_(0.5, 2.0, generator=generator)
            m.weight.data.uniform_(0.5, 1.5, generator=generator)
            m.bias.data.uniform_(-0.5, 0.5, generator=generator)
    lo, hi = threshold_range
    for q in pqa_layers(model).values():
        q.threshold.data.fill_(lo + (hi - lo) * torch.rand((), generator=generator).item())
    return model.eval()


def random_qann(name: str, levels=8, alpha=-0.25, beta=1.0, seed=0, num_classes=10, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, num_classes, make_activation("pqa", levels, alpha, beta), **kwargs)
    return randomize(model, torch.Generator().manual_seed(seed))


def assert_every_layer_fired(metrics: dict) -> None:
    """A run's T=1 agreement means something only if its SNN spiked: neurons exist (the SNN is not the
    QANN itself) and every one of its layers fired at t = 1 (a constant or dead network agrees too)."""
    layers = metrics["snn"]["layer_spikes"]
    assert layers, "no spiking layer: the 'SNN' is not a converted network"
    silent = [name for name, counts in layers.items() if not counts[0] > 0]
    assert not silent, f"layers that never fired at t=1: {silent}"
