"""Framework overhead: one training epoch through train.py's Lightning path against a plain PyTorch
loop doing the same work (issue: time to accuracy; target <= 1.05x).

    python benchmarks/overhead.py                          # CIFAR-10 from $PMSM_DATA_DIR, else random images
    python benchmarks/overhead.py --images 10000 --rounds 5 --precision bf16-mixed

Both sides train ResNet-20 with PQA from the same initial weights on the same images: the on-device
CIFAR data path (data.on_device=true: crop, flip and normalise per batch, pmsm_exp.data.DeviceLoader),
the same batch, SGD with momentum and weight decay, the per-step warm-up/cosine schedule, bf16
autocast (or float32) and the same quantizer kernels. The Lightning side is what train.py runs: the
QANNModule, a Trainer with the configured callbacks (last.ckpt every epoch, the learning-rate monitor,
Resumable, StopOnDivergence), a CSV logger and the progress bar off (as in a batch job). Each round
trains two epochs on each side and times the second (steady state: what every further epoch of a
run costs; Lightning's from its start to the end of `fit`, the epoch's checkpoint included) and the
whole call (setup once per run included). The plain side is the loop written out. Rounds alternate
the two (interleaved); figures are medians. Prints a table and writes OUT/overhead.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F


from pmsm_exp.data import CIFAR10DataModule, default_data_dir  # noqa: E402
from pmsm_exp.data.common import ArrayDataset  # noqa: E402
from pmsm_exp.engine.callbacks import StopOnDivergence  # noqa: E402
from pmsm_exp.engine.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from pmsm_exp.engine.loggers import CSVLogger  # noqa: E402
from pmsm_exp.engine.preemption import Resumable  # noqa: E402
from pmsm_exp.engine.training import QANNModule, lr_factor  # noqa: E402
from pmsm_exp.models import create_model  # noqa: E402
from pmsm_exp.quant import make_activation, use_kernels  # noqa: E402

# recipe=fast's optimizer (conf/recipe/fast.yaml): Nesterov SGD, 1 warm-up epoch then cosine, λ floor 0.1
OPTIM = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "scheduler": "cosine",
         "warmup_epochs": 1, "threshold_floor": 0.1}


def datamodule(images: int, batch: int) -> CIFAR10DataModule:
    root = Path(default_data_dir())
    dm = CIFAR10DataModule(data_dir=str(root), batch_size=batch, num_workers=0, on_device=True,
                           train_subset=images)
    if (root / "cifar-10-batches-py").is_dir():
        dm.setup("fit")
        return dm
    # no CIFAR-10 here: random uint8 images of its shape (the cost does not depend on the pixels)
    g = torch.Generator().manual_seed(0)
    dm.train_set = ArrayDataset(torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g),
                                torch.randint(0, 10, (images,), generator=g), dm.train_transform())
    dm.test_set = dm.train_set
    return dm


EPOCHS = 2   # the second is timed on its own: the steady state


class EpochStart(L.Callback):
    def __init__(self):
        self.starts = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.starts.append(time.perf_counter())


def lightning_epoch(model0, dm, precision: str, kernels: str, work: Path):
    """Seconds of the whole fit and of its last epoch (from its start to the end of fit)."""
    def run():
        t0 = time.perf_counter()
        model = use_kernels(copy.deepcopy(model0), kernels)
        module = QANNModule(model, 10, OPTIM)
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=work / "checkpoints", filename="last",
                                                   enable_version_counter=False)
        epochs = EpochStart()
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, precision=precision,
                            logger=CSVLogger(str(work)),
                            callbacks=[ckpt, L.pytorch.callbacks.LearningRateMonitor(logging_interval="epoch"),
                                       Resumable(work / "checkpoints"), StopOnDivergence(), epochs],
                            plugins=[AtomicCheckpointIO()], enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=50)
        trainer.fit(module, datamodule=dm)
        end = time.perf_counter()
        return end - t0, end - epochs.starts[-1]
    return run


def plain_epoch(model0, dm, precision: str, kernels: str):
    def run():
        t0 = time.perf_counter()
        model = use_kernels(copy.deepcopy(model0), kernels).train()
        opt = torch.optim.SGD(model.parameters(), lr=OPTIM["lr"], momentum=OPTIM["momentum"],
                              weight_decay=OPTIM["weight_decay"], nesterov=OPTIM["nesterov"])
        thresholds = [m.threshold for m in model.modules() if hasattr(m, "threshold")]
        steps = math.ceil(len(dm.train_set) / dm.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, EPOCHS * steps, steps, "cosine"))
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
        for _ in range(EPOCHS):
            start = time.perf_counter()
            for x, y in dm.device_loader("cpu"):
                with autocast:
                    loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    for lam in thresholds:
                        lam.clamp_(min=OPTIM["threshold_floor"])
        end = time.perf_counter()
        return end - t0, end - start
    return run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=32)        # recipe=fast
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--precision", choices=("bf16-mixed", "32-true"), default="bf16-mixed")
    ap.add_argument("--kernels", choices=("eager", "compile"), default="eager")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model0 = create_model("resnet20", 10, make_activation("pqa", threshold=2.0))   # recipe=fast: λ0 = 2
    dm = datamodule(args.images, args.batch)
    with tempfile.TemporaryDirectory() as work:
        cases = {"lightning (train.py's path)": lightning_epoch(model0, dm, args.precision, args.kernels, Path(work)),
                 "plain PyTorch loop": plain_epoch(model0, dm, args.precision, args.kernels)}
        for fn in cases.values():   # warm-up: allocator, oneDNN choices, imports inside Lightning
            fn()
        times = {name: [] for name in cases}
        for r in range(args.rounds):   # interleaved: a slow spell of the machine falls on both
            for name, fn in cases.items():
                times[name].append(fn())
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    steady = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    whole = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    light, plain = "lightning (train.py's path)", "plain PyTorch loop"
    ratio, ratio_whole = steady[light] / steady[plain], whole[light] / whole[plain]
    steps = math.ceil(len(dm.train_set) / args.batch)
    lines = [f"ResNet-20 PQA, {len(dm.train_set)} images ({steps} steps of {args.batch}) an epoch, {EPOCHS} epochs a "
             f"call, {args.precision}, {args.kernels} kernels, {torch.get_num_threads()} threads, {args.rounds} "
             f"interleaved rounds (medians)", "",
             "| path | s per epoch (the 2nd) | ms per step | s per call (setup + 2 epochs) |", "|---|---|---|---|"]
    lines += [f"| {k} | {steady[k]:.2f} | {1000 * steady[k] / steps:.1f} | {whole[k]:.2f} |" for k in cases]
    lines += ["", f"Lightning / plain, an epoch in steady state: {ratio:.3f}x; a whole call: {ratio_whole:.3f}x"]
    print("\n".join(lines))
    result = {"settings": vars(args), "images": len(dm.train_set), "steps": steps, "epochs": EPOCHS,
              "seconds": times, "median_epoch": steady, "median_call": whole, "ratio": ratio,
              "ratio_call": ratio_whole, "torch": str(torch.__version__), "lightning": L.__version__}
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "overhead.json").write_text(json.dumps(result, indent=2))
    Path(args.out, "overhead.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
