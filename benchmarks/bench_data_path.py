"""CIFAR training data path: loader workers (per-image torchvision transforms) against the
on-device path (data.on_device: uint8 set on the device, batch augmentation there), and,
with --model, a training step fed by each against pure compute on a batch already there.

    python benchmarks/bench_data_path.py [--device cuda] [--n 10000] [--batch 256] [--workers 4]
        [--model resnet20] [--bf16] [--channels-last] [--rounds 5] [--data-dir DIR]

Same augmentation both ways: crop with padding 4, flip, Cutout(--cutout), normalisation.
Random uint8 images unless --data-dir holds CIFAR-10 (the cost does not depend on the
pixels). Rounds are interleaved; prints medians of images/s and ratios against pure
compute (issue 11's target: on-device step <= 1.15x pure compute); nothing is asserted.
"""
import argparse
import statistics
from contextlib import nullcontext

import torch

from pmsm_exp.data import CIFAR10DataModule, DeviceLoader
from timing import interleaved
from pmsm_exp.data.common import ArrayDataset, make_loader


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=10000, help="images per pass")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--cutout", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default=None, help="e.g. resnet20: also time training steps")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)

    dm = CIFAR10DataModule(data_dir=a.data_dir, cutout=a.cutout, batch_size=a.batch, num_workers=a.workers,
                           on_device=True, train_subset=a.n if a.data_dir else None, seed=0)
    if a.data_dir:
        dm.setup()
    else:  # random images in place of the files
        x = torch.randint(0, 256, (a.n, 3, 32, 32), dtype=torch.uint8)
        dm.train_set = ArrayDataset(x, torch.randint(0, 10, (a.n,)), dm.train_transform())
    cpu_loader = make_loader(dm.train_set, a.batch, a.workers, pin_memory=device.type == "cuda", shuffle=True)
    dev_loader: DeviceLoader = dm.device_loader(device)

    step = None
    if a.model:
        from pmsm_exp.models import create_model
        from pmsm_exp.quant import make_activation
        model = create_model(a.model, 10, make_activation("pqa")).to(device)
        if a.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if a.bf16 else nullcontext())

        def step(x, y):
            if a.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    fixed = (torch.randn(a.batch, 3, 32, 32, device=device), torch.randint(0, 10, (a.batch,), device=device))

    def run_loader(loader):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if step:
                step(x, y)

    def run_pure():
        for _ in range(len(dev_loader)):
            step(*fixed)

    cases = {"loader workers": lambda: run_loader(cpu_loader), "on device": lambda: run_loader(dev_loader)}
    if step:
        cases = {"pure compute": run_pure, **cases}
    for fn in cases.values():  # warm-up: allocator, cuDNN heuristics, worker start
        fn()
    times = interleaved(cases, a.rounds, device)

    base = "pure compute" if step else "loader workers"
    what = f"training steps ({a.model}{', bf16' if a.bf16 else ''}{', channels_last' if a.channels_last else ''})" \
        if step else "data only"
    print(f"device={device} n={a.n} batch={a.batch} workers={a.workers} cutout={a.cutout} rounds={a.rounds}: {what}")
    print(f"{'path':<16} {'images/s':>12} {'s/pass':>9} {'time / ' + base:>22}")
    ref = statistics.median(times[base])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<16} {a.n / med:>12.0f} {med:>9.3f} {med / ref:>22.2f}")


if __name__ == "__main__":
    main()
