"""Spiking ViT: SNN versions of the quantized ViT's own layer types, registered as converters.

The SNN sees the image at step 1 and zeros afterwards (`simulate(..., encoding="first",
readout="sum")`); every layer passes on the *change* of its output, so the answer at T
is the sum of the output layer over steps 1..T. Hence:
- biases, the class token and the position embedding enter once, at the first step;
- LayerNorm and softmax act on their accumulated input and emit the change of their output;
- a product of two spike trains a, b emits A_t b_t + a_t B_{t-1} (A, B: sums up to t),
  whose sum over steps is A_T B_T.
Step 1 performs exactly the quantized ViT's float operations: states start as the
first input itself (no 0 + x), and the product's first step is the single matmul a_1 b_1.
With PQA -> AIF (conversion.py) the first step therefore reproduces the QANN exactly.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pmsm_exp.models.vit import AddTokens, AttnSoftmax, MatMul, PatchConv, ViTLayerNorm, ViTLinear
from pmsm_exp.snn.conversion import register_converter
from pmsm_exp.snn.neurons import MultiStepModule


class _Stepped(MultiStepModule):
    """Counts the timesteps seen since reset, to tell the first global step."""

    def reset_state(self) -> None:
        self.seen = 0

    def _advance(self) -> bool:
        first = self.seen == 0
        self.seen += self.steps
        return first


class SpikingBiasOnce(_Stepped):
    """A linear layer or the patch convolution whose bias enters at the first step only."""

    def __init__(self, layer: nn.Linear | nn.Conv2d):
        super().__init__()
        self.layer = layer
        self.reset_state()

    def _no_bias(self, x):
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, self.layer.weight, None)
        return F.linear(x, self.layer.weight)

    def forward(self, x):
        if not self._advance():
            return self._no_bias(x)
        if self.steps == 1:
            return self.layer(x)  # exactly the QANN's operation
        xs = self.split_time(x)
        return torch.cat([self.layer(xs[0]), self._no_bias(xs[1:].flatten(0, 1))])


class SpikingTokens(_Stepped):
    """Class token and position embedding at the first step; a zero class-token slot later."""

    def __init__(self, add: AddTokens):
        super().__init__()
        self.add = add
        self.reset_state()

    def forward(self, x, cls_token, pos_embed):
        first = self._advance()
        empty = cls_token.new_zeros(x.shape[0], 1, x.shape[-1])
        if not first:
            return torch.cat([empty, x], dim=1)
        if self.steps == 1:
            return self.add(x, cls_token, pos_embed)
        xs = self.split_time(x)
        later = torch.cat([empty[xs.shape[1]:], xs[1:].flatten(0, 1)], dim=1)
        return torch.cat([self.add(xs[0], cls_token, pos_embed), later])


class SpikingOnSum(MultiStepModule):
    """`fn` (LayerNorm, softmax) on the running sum X_t of its input; emits fn(X_t) - fn(X_{t-1})."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.reset_state()

    def reset_state(self) -> None:
        self.total: torch.Tensor | None = None
        self.last: torch.Tensor | None = None

    def forward(self, x):
        outputs = []
        for x_t in self.split_time(x):
            self.total = x_t if self.total is None else self.total + x_t
            y = self.fn(self.total)
            outputs.append(y if self.last is None else y - self.last)
            self.last = y
        return torch.stack(outputs).reshape(x.shape)


class SpikingMatMul(MultiStepModule):
    """Product of two spike trains: emits A_t b_t + a_t B_{t-1} (= A_t b_t + a_t B_t - a_t b_t with
    one matmul fewer), so the outputs sum to A_T B_T; step 1 is the QANN's single a_1 b_1."""

    def __init__(self):
        super().__init__()
        self.reset_state()

    def reset_state(self) -> None:
        self.a_sum: torch.Tensor | None = None
        self.b_sum: torch.Tensor | None = None

    def forward(self, a, b):
        outputs = []
        for a_t, b_t in zip(self.split_time(a), self.split_time(b)):
            self.a_sum = a_t if self.a_sum is None else self.a_sum + a_t
            out = self.a_sum @ b_t
            if self.b_sum is not None:
                out = out + a_t @ self.b_sum
            self.b_sum = b_t if self.b_sum is None else self.b_sum + b_t
            outputs.append(out)
        return torch.stack(outputs).flatten(0, 1)


@register_converter(ViTLinear)
@register_converter(PatchConv)
def _convert_bias_once(layer, neuron: str) -> SpikingBiasOnce:
    return SpikingBiasOnce(layer)


@register_converter(ViTLayerNorm)
@register_converter(AttnSoftmax)
def _convert_on_sum(fn, neuron: str) -> SpikingOnSum:
    return SpikingOnSum(fn)


@register_converter(MatMul)
def _convert_matmul(_, neuron: str) -> SpikingMatMul:
    return SpikingMatMul()


@register_converter(AddTokens)
def _convert_tokens(add, neuron: str) -> SpikingTokens:
    return SpikingTokens(add)
