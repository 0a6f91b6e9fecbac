"""BatchNorm folding (`snn.fold_bn=true`): a copy of the quantized ANN whose every
BatchNorm that reads a Conv/Linear output directly is folded into that layer.

The SNN then runs one layer fewer per block at every timestep (spikingjelly's
converter does the same). Folding changes the float arithmetic (W·γ/σ instead of
BN(W·x)), so the folded QANN, not the trained one, is the reference that the
SNN's first timestep reproduces exactly; evaluation records which one it used.

Pairs are found by a probe forward pass (forward hooks), not by module order:
a BatchNorm is folded when its input is the very tensor a Conv/Linear returned
and no other module consumed that tensor.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _find_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    produced: dict[int, tuple[str, torch.Tensor]] = {}   # id(output) -> (producer path, output)
    consumers: dict[int, list[str]] = {}                 # id(input) -> module paths that read it
    handles = []
    leaves = {n: m for n, m in model.named_modules() if not list(m.children())}
    for name, m in leaves.items():
        def pre(mod, args, name=name):
            entry = produced.get(id(args[0])) if args else None
            if entry is not None and entry[1] is args[0]:   # a live Conv/Linear output
                consumers.setdefault(id(args[0]), []).append(name)

        handles.append(m.register_forward_pre_hook(pre))
        if isinstance(m, _PRODUCERS):
            handles.append(m.register_forward_hook(
                lambda mod, args, out, name=name: produced.__setitem__(id(out), (name, out))))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for out_id, (producer, _out) in produced.items():   # _out kept the id unique during the pass
        readers = consumers.get(out_id, [])
        if len(readers) == 1 and isinstance(leaves[readers[0]], _BN):
            pairs.append((producer, readers[0]))
    return pairs


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[tuple[str, str]]]:
    """(a copy of `model` in eval mode with foldable BatchNorms folded, the (layer, bn) pairs folded).
    `example`: one input batch (any size) for the probe pass. The model itself is untouched."""
    folded = copy.deepcopy(model).eval()
    pairs = _find_pairs(folded, example)
    for producer, bn in pairs:
        layer, norm = folded.get_submodule(producer), folded.get_submodule(bn)
        fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        _set(folded, producer, fuse(layer, norm))
        _set(folded, bn, nn.Identity())
    return folded, pairs
