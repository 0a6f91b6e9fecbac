"""Conversion refuses what it cannot convert exactly, and converts the rest correctly:
IF neuron with beta < 1, learned lambda <= 0, float leaves left over (allow-list),
T=1 exactness after casting both models, models that import nothing about spikes,
and the ViT optimizer's weight-decay groups."""
import ast
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pmsm_exp.snn.conversion import convert_to_snn
from pmsm_exp.engine.training import QANNModule
from pmsm_exp.models import create_model
from pmsm_exp.quant import PQA, make_activation, pqa_layers
from pmsm_exp.snn.simulation import simulate

SRC = Path(__file__).resolve().parents[1] / "src" / "pmsm_exp"


def test_if_neuron_saturates_at_beta_lambda():
    q = PQA(8, alpha=0.0, beta=0.5, threshold=8.0)          # theta = 1, levels 0..4: saturates at 4
    z = torch.tensor([[1.0, 3.0, 5.0, 8.0]])
    assert q(z).tolist() == [[1.0, 3.0, 4.0, 4.0]]
    snn = convert_to_snn(nn.Sequential(q), "if")
    T = 256
    mean = simulate(snn, z, T, "static", "mean").outputs[-1]
    # an IF neuron driven by a constant current z has rate output clamp(z, 0, beta*lambda) (to within one
    # spike of size beta*lambda over T steps): the quantizer's clipped range, here exactly the levels
    expected = torch.clamp(z, 0, 0.5 * 8.0)
    assert torch.allclose(mean, expected, atol=4.0 / T), mean


@pytest.mark.parametrize("lam", [0.0, -1.5, math.nan])
def test_nonpositive_learned_lambda_is_refused_naming_the_layer(lam):
    model = nn.Sequential(nn.Linear(4, 4), PQA(8), nn.Sequential(nn.Linear(4, 4), PQA(8)))
    model[2][1].threshold.data.fill_(lam)
    with pytest.raises(ValueError, match=r"layer '2\.1'.*lambda"):
        convert_to_snn(model, "aif")


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


@pytest.mark.parametrize("leaf, path", [(Swish(), "1.1"), (nn.GELU(), "1.1"), (nn.Softmax(-1), "1.1")])
def test_float_leaves_are_refused_by_path(leaf, path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(PQA(8), leaf), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=rf"'{re.escape(path)}' \({type(leaf).__name__}\)"):
        convert_to_snn(model, "aif")


def test_allowed_leaves_stay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), PQA(8), nn.MaxPool2d(2), nn.AvgPool2d(1),
                          nn.Dropout(0.1), nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    snn = convert_to_snn(model, "aif")
    assert type(snn[2]).__name__ == "SpikingNeuron" and isinstance(snn[9], nn.Linear)


@pytest.mark.parametrize("levels, alpha", [(6, -2 / 6), (10, -0.2)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_first_step_exact_after_casting_both_models(levels, alpha, dtype):
    """As Lightning's 64-true / bf16-true plugins do: convert in float32, cast both afterwards."""
    torch.manual_seed(levels)
    qann = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), PQA(levels, alpha, 1.0, 3.409),
                         nn.Conv2d(8, 8, 3, padding=1), PQA(levels, alpha, 1.0, 2.7), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10)).eval()
    snn = convert_to_snn(qann, "aif")
    qann, snn = qann.to(dtype), snn.to(dtype)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        expected = qann(x)
    assert expected.abs().sum() > 0
    result = simulate(snn, x, 1)
    first = result.outputs[0]
    assert first.dtype == dtype and torch.equal(first, expected)
    # the neurons exist and each fired (the last layer's bias alone makes the output nonzero)
    assert len(result.spike_counts) == 2 and all(c[0] > 0 for c in result.spike_counts.values())
    assert len(set(expected.argmax(1).tolist())) > 1   # predictions vary over the batch


def test_models_import_nothing_about_spikes():
    spiking = {"pmsm_exp.snn", "pmsm_exp.snn.spiking_vit", "pmsm_exp.snn.neurons", "pmsm_exp.snn.conversion",
               "pmsm_exp.snn.simulation"}
    for file in (SRC / "models").glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            assert not names & spiking, f"{file.name} imports {names & spiking}"
    # and the spiking ViT's converters are still found when a ViT is converted
    vit = create_model("vit_tiny", 10, make_activation("pqa", 16, -0.5, 0.4375), depth=1)
    snn = convert_to_snn(vit.eval(), "aif")
    assert any(type(m).__module__ == "pmsm_exp.snn.spiking_vit" for m in snn.modules())


# ---------------------------------------------------------------- optimizer groups
def fake_trainer(batch=64, world=4, accumulate=2):
    loader = SimpleNamespace(batch_size=batch)
    return SimpleNamespace(estimated_stepping_batches=100, max_epochs=1, world_size=world,
                           accumulate_grad_batches=accumulate,
                           datamodule=SimpleNamespace(train_dataloader=lambda: loader))


def test_vit_adamw_groups_and_global_batch_lr():
    model = create_model("vit_tiny", 10, make_activation("pqa", 16, -0.5, 0.4375), depth=1)
    module = QANNModule(model, 10, {"name": "adamw", "lr": 1.5e-4, "weight_decay": 0.05, "scale_lr_by_batch": True})
    module._trainer = fake_trainer()
    opt = module.configure_optimizers()["optimizer"]
    # the expected split, written out by module type (DeiT / SpikeZIP-TF): no decay on thresholds,
    # norm weights, biases, pos_embed and cls_token; decay on conv and linear weights
    no_decay = {id(q.threshold) for q in pqa_layers(model).values()} | {id(model.pos_embed), id(model.cls_token)}
    decay = set()
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            no_decay |= {id(p) for p in m.parameters(recurse=False)}
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            decay.add(id(m.weight))
            if m.bias is not None:
                no_decay.add(id(m.bias))
    by_decay = {}
    for group in opt.param_groups:
        by_decay.setdefault(group["weight_decay"], set()).update(id(p) for p in group["params"])
    assert by_decay == {0.0: no_decay, 0.05: decay}
    assert len(no_decay | decay) == sum(1 for p in model.parameters() if p.requires_grad)
    # lr x global batch / 256 = 1.5e-4 x (64 per device x 4 devices x 2 accumulated) / 256
    assert all(g["initial_lr"] == pytest.approx(1.5e-4 * 64 * 4 * 2 / 256) for g in opt.param_groups)
