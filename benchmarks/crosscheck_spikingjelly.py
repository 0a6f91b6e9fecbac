"""Our QCFS conversion checked against an implementation nobody here wrote: spikingjelly's IF neuron.

    pip install -e ".[bench]"        # spikingjelly
    python benchmarks/crosscheck_spikingjelly.py CKPT [--images 2000] [--timesteps 1 2 4 8 16 32 64] [--out DIR]

CKPT is a trained QCFS checkpoint (e.g. results/checkpoints/paper-cpu/...-qcfs-s42.ckpt). Both SNNs start
from the same weights. Ours: convert.py's conversion (snn.neuron=if: threshold λ, one spike of λ per
step, v(0) = λ/2, soft reset) simulated by pmsm_exp.snn.simulate. Theirs: every quantizer replaced
by spikingjelly's ann2snn recipe, VoltageScaler(1/λ) → IFNode(v_threshold=1, v_reset=None: soft
reset) → VoltageScaler(λ), with the membrane set to 1/2 after each reset (QCFS's initial potential),
stepped one timestep at a time (step_mode 's') and read out as the mean of the output layer over steps
1..T. A third SNN, spikingjelly's IFNode at threshold λ itself (no input scaler), separates the
rescaling's rounding (v/λ >= 1 against v >= λ in float32) from any difference in the neuron.
Printed per T: the accuracies on the first N CIFAR-10 test images, and the fraction of images on which
ours and each spikingjelly SNN predict the same class. Writes OUT/crosscheck.json (with provenance:
commit, versions, machine, time) and OUT/crosscheck.md; sweeps/paper.sh runs it on the campaign's
ResNet-20 QCFS weights and publishes it (results/crosscheck_spikingjelly.md).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch import nn

from pmsm_exp.data import CIFAR10DataModule, default_data_dir
from pmsm_exp.jobs.builders import build_model
from pmsm_exp.quant import PQA
from pmsm_exp.runs import provenance
from pmsm_exp.runs.checkpoints import load_checkpoint
from pmsm_exp.runs.crosscheck import SCALED, UNSCALED, markdown
from pmsm_exp.snn import convert_to_snn, simulate


def spikingjelly_snn(qann: nn.Module, scaled: bool = True) -> tuple[nn.Module, list[nn.Module]]:
    """A copy of `qann` whose quantizers are spikingjelly IF neurons: between voltage scalers with
    threshold 1 (ann2snn's recipe, `scaled`), or with threshold λ and only the output scaler."""
    import copy

    from spikingjelly.activation_based import neuron
    from spikingjelly.activation_based.ann2snn.modules import VoltageScaler

    snn = copy.deepcopy(qann).eval()
    nodes = []

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, PQA):
                if float(child.alpha) != 0.0:
                    raise SystemExit(f"error: {name}: alpha={float(child.alpha)}; the IF cross-check is for QCFS "
                                     f"(alpha=0) checkpoints")
                lam = float(child.threshold.detach())
                node = neuron.IFNode(v_threshold=1.0 if scaled else lam, v_reset=None)
                nodes.append(node)
                # a spike is 1 in spikingjelly: the last scaler turns it into λ either way
                setattr(parent, name, nn.Sequential(VoltageScaler(1.0 / lam), node, VoltageScaler(lam)) if scaled
                        else nn.Sequential(node, VoltageScaler(lam)))
            else:
                replace(child)
    replace(snn)
    return snn, nodes


@torch.no_grad()
def theirs(snn: nn.Module, nodes: list[nn.Module], x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Predictions [T, N]: the argmax of the mean output over steps 1..t."""
    from spikingjelly.activation_based import functional
    functional.reset_net(snn)
    for node in nodes:
        node.v = 0.5 * node.v_threshold   # QCFS's initial membrane potential: half the threshold
    total, preds = None, []
    for t in range(1, timesteps + 1):
        out = snn(x)
        total = out if total is None else total + out
        preds.append((total / t).argmax(-1))
    return torch.stack(preds)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--timesteps", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--label", default=None, help="how the record names the checkpoint (default: its file name)")
    a = ap.parse_args(argv)
    config, state, _ = load_checkpoint(a.ckpt)
    if config["pqa"].get("method") != "qcfs":
        raise SystemExit(f"error: {a.ckpt}: a {config['pqa'].get('method')} checkpoint; give a QCFS one")
    qann = build_model(config["model"], config["pqa"], 10)
    qann.load_state_dict(state)
    qann.eval()
    ours_snn = convert_to_snn(qann, neuron="if")
    sj = {SCALED: spikingjelly_snn(qann, scaled=True), UNSCALED: spikingjelly_snn(qann, scaled=False)}
    # the images the checkpoint was tested on (its run's data folder), else this machine's default
    data_dir = (config.get("data") or {}).get("data_dir") or str(default_data_dir())
    dm = CIFAR10DataModule(data_dir=data_dir, batch_size=a.batch, num_workers=0, test_subset=a.images)
    dm.setup("test")
    steps = max(a.timesteps)
    correct = {"ours": torch.zeros(steps), **{k: torch.zeros(steps) for k in sj}}
    same = {k: torch.zeros(steps) for k in sj}
    qann_correct, n = 0, 0
    for x, y in dm.test_dataloader():
        mine = simulate(ours_snn, x, steps, record=False).outputs.argmax(-1)     # [T, N]
        correct["ours"] += (mine == y).sum(1).double()
        for key, (snn, nodes) in sj.items():
            other = theirs(snn, nodes, x, steps)
            correct[key] += (other == y).sum(1).double()
            same[key] += (mine == other).sum(1).double()
        qann_correct += int((qann(x).argmax(-1) == y).sum())
        n += len(y)
    rows = [{"T": t, **{k: float(v[t - 1] / n) for k, v in correct.items()},
             **{f"same_prediction_{k}": float(v[t - 1] / n) for k, v in same.items()}} for t in a.timesteps]
    label = a.label or a.ckpt.name
    result = {"checkpoint": label, "images": n, "qann_acc": qann_correct / n, "rows": rows,
              "provenance": provenance.collect(
                  "benchmarks/crosscheck_spikingjelly",
                  [label, "--images", str(a.images), "--timesteps", *map(str, a.timesteps)], None)}
    text = markdown(result)
    print(text)
    os.makedirs(a.out, exist_ok=True)
    Path(a.out, "crosscheck.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    Path(a.out, "crosscheck.md").write_text(text)
    return result


if __name__ == "__main__":
    main()
