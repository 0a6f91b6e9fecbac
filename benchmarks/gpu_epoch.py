"""Seconds per epoch of ResNet-20 (PQA) training on CIFAR-10-shaped data with the GPU data path,
against pure compute on a batch already on the device (issue 11: target <= 1.15x).

    python benchmarks/gpu_epoch.py                              # the GPU it finds, batches 256 and 1024
    python benchmarks/gpu_epoch.py --compile                    # + torch.compile (model.compile=true)
    python benchmarks/gpu_epoch.py --device cpu --steps 3 --batches 32   # smoke check on a CPU

Both paths run the same training step (SGD, cross-entropy) with the settings of trainer=gpu:
bf16 autocast (--precision 32 for float32) and channels_last (--no-channels-last), through
pmsm_exp.engine.switches, as QANNModule does. The data path is data.on_device: the uint8 training set
on the device, shuffled, cropped with padding 4, flipped (and Cutout with --cutout) there per
batch (pmsm_exp.data.DeviceLoader); pure compute feeds one fixed normalised batch. Random
uint8 images unless --data-dir holds CIFAR-10 (the cost does not depend on the pixels).

Each round times --steps steps of each path back to back (interleaved); figures are medians
over rounds. Seconds per epoch = seconds per step x ceil(--images / batch). Prints a table and
writes OUT/gpu_epoch.json and OUT/gpu_epoch.md. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))   # benchmarks/timing.py, also when loaded by path
from timing import interleaved  # noqa: E402

from pmsm_exp.engine import switches as speed
from pmsm_exp.data import CIFAR10DataModule
from pmsm_exp.data.common import ArrayDataset
from pmsm_exp.models import create_model
from pmsm_exp.quant import make_activation

TARGET = 1.15   # issue 11: data path time <= 1.15 x pure compute


def make_step(device: torch.device, bf16: bool, channels_last: bool, compile_mode):
    """A training step of a fresh ResNet-20 with PQA, set up as QANNModule sets it up."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, make_activation("pqa")).to(device)
    if channels_last:
        speed.to_channels_last(model)
    forward = speed.compiled(model, compile_mode) or model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(x, y):
        x = speed.as_input(x, channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def data_loader(images: torch.Tensor, labels: torch.Tensor, batch: int, cutout: int, device: torch.device):
    dm = CIFAR10DataModule(batch_size=batch, cutout=cutout, on_device=True, seed=0)
    dm.train_set = ArrayDataset(images, labels, dm.train_transform())
    return dm.device_loader(device)


def measure(batch: int, a, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> dict:
    step = make_step(device, a.precision == "bf16", not a.no_channels_last, a.compile)
    loader = data_loader(images, labels, batch, a.cutout, device)
    steps = a.steps or len(images) // batch   # full batches (a short last one would only add a recompile)
    g = torch.Generator(device=device).manual_seed(0)
    fixed = (torch.randn(batch, 3, 32, 32, device=device, generator=g),
             torch.randint(0, 10, (batch,), device=device, generator=g))

    def pure():
        for _ in range(steps):
            step(*fixed)

    def data_path():  # a new pass (permutation) each time it runs out; full batches only
        done = 0
        while done < steps:
            for x, y in itertools.islice(loader, steps - done):
                if len(y) == batch:
                    step(x, y)
                    done += 1

    cases = {"pure compute": pure, "GPU data path": data_path}
    for _ in range(a.warmup):          # compilation, cuDNN's autotuner, the allocator
        step(*fixed)
        step(*next(iter(loader)))
    times = {name: [t / steps for t in ts] for name, ts in interleaved(cases, a.rounds, device).items()}
    per_epoch = math.ceil(len(images) / batch)
    base = statistics.median(times["pure compute"])
    rows = {}
    for name, ts in times.items():
        per_step = statistics.median(ts)
        rows[name] = {"s_per_step": per_step, "s_per_epoch": per_step * per_epoch,
                      "images_per_s": batch / per_step, "ratio_to_pure": per_step / base}
    return {"batch": batch, "steps_timed": steps, "steps_per_epoch": per_epoch, "paths": rows}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"ResNet-20 (PQA) training, {s['images']} images per epoch, device {result['device']}, "
             f"{s['precision']}, channels_last={s['channels_last']}, compile={s['compile']}, cutout={s['cutout']}, "
             f"{s['rounds']} rounds of {s['steps'] or 'one epoch of'} steps (medians)", "",
             "| batch | path | s / epoch | images/s | time / pure compute |", "|---|---|---|---|---|"]
    for r in result["batches"]:
        for name, p in r["paths"].items():
            lines.append(f"| {r['batch']} | {name} | {p['s_per_epoch']:.3f} | {p['images_per_s']:.0f} | "
                         f"{p['ratio_to_pure']:.2f}x |")
    lines += ["", f"Target: GPU data path <= {TARGET:.2f}x pure compute."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--images", type=int, default=50000, help="images per epoch (CIFAR-10: 50000)")
    ap.add_argument("--steps", type=int, default=0,
                    help="steps timed per path and round (0: one epoch of full batches)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of each path first")
    ap.add_argument("--precision", choices=("bf16", "32"), default="bf16")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                    help="torch.compile the model (optionally a mode: " + ", ".join(speed.COMPILE_MODES) + ")")
    ap.add_argument("--cutout", type=int, default=0, help="Cutout side in pixels (0: off, the config default)")
    ap.add_argument("--data-dir", default=None, help="a folder holding cifar-10-batches-py (else random images)")
    ap.add_argument("--out", default="bench-out")
    a = ap.parse_args(argv)
    if isinstance(a.compile, str) and a.compile not in speed.COMPILE_MODES:
        ap.error(f"--compile: got {a.compile!r}; allowed: no value or one of {', '.join(speed.COMPILE_MODES)}")
    if a.images < max(a.batches):
        ap.error(f"--images ({a.images}) must be at least the largest batch ({max(a.batches)})")
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True   # as trainer=gpu
    if a.data_dir:
        dm = CIFAR10DataModule(data_dir=a.data_dir, train_subset=min(a.images, 50000))
        dm.setup()
        images, labels = dm.train_set.images, dm.train_set.labels
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (a.images, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (a.images,), generator=g)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "settings": {"images": len(images), "precision": a.precision, "channels_last": not a.no_channels_last,
                     "compile": a.compile, "cutout": a.cutout, "steps": a.steps, "rounds": a.rounds,
                     "data": a.data_dir or "random uint8"},
        "batches": [measure(b, a, images, labels, device) for b in a.batches],
    }
    md = markdown(result)
    print(md, end="")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_epoch.json").write_text(json.dumps(result, indent=2))
    (out / "gpu_epoch.md").write_text(md)
    return result


if __name__ == "__main__":
    main()
