"""The peer benchmark: pmsm-exp against spikingjelly's ann2snn.Converter, in one process.

    pip install -e ".[bench]"                       # spikingjelly (benchmark only)
    python benchmarks/peer.py                        # throughput rows, CPU or the GPU it finds
    python benchmarks/peer.py --train-epochs 4 --train-images 10000   # + a briefly trained pair

Rows (issue 11's table): SNN images/s at T=1, 8, 32 for both systems (ResNet-20, batch 64;
ours: PQA + AIF with default settings, and with snn.fold_bn; theirs: the same ResNet-20 with
ReLU through `ann2snn.Converter(RateCodingRecipe)`, stepped the way its examples do), our SNN
time over our own quantized ANN's forward at T=1 and 8, and a training step with PQA over
the same step with ReLU. Every measurement of a round runs back to back with the others
(interleaved), and each figure is the median over rounds, so a shared machine slows both
sides alike: read the ratios, not the absolute numbers.

With --train-epochs > 0 it also trains a PQA ResNet-20 (ours) and a ReLU ResNet-20 (for
spikingjelly's converter) on CIFAR-10 (the shared .npz, or synthetic data with a note) and
prints each one's accuracy at T = 1, 2, 4, 8, 16, 32 in the same table.

Writes OUT/peer.json and OUT/peer.md. Runs against whatever `pmsm_exp` is importable, so the
same script measures an older checkout (PYTHONPATH=old/src) for before/after tables.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from timing import interleaved   # benchmarks/timing.py (this script's folder is on sys.path)

from pmsm_exp.quant import kernels as fused, use_kernels
from pmsm_exp.snn import convert_to_snn, fold_batchnorm
from pmsm_exp.models import create_model
from pmsm_exp.quant import make_activation
from pmsm_exp.snn import simulate

TIMESTEPS = (1, 8, 32)
ACC_TIMESTEPS = (1, 2, 4, 8, 16, 32)
REPO = Path(__file__).resolve().parents[1]


def npz_file() -> Path:
    """The shared JPEG copy of CIFAR-10: in $PMSM_DATA_DIR if it is there, else in the repository's
    sibling folder shared/ (never a path of one machine)."""
    name = Path("cifar10") / "cifar10-jpeg-q75.npz"
    candidates = [Path(os.environ[k]) / name for k in ("PMSM_DATA_DIR",) if os.environ.get(k)]
    candidates += [REPO.parent / "shared" / "data" / name]
    return next((p for p in candidates if p.is_file()), candidates[-1])


NPZ = npz_file()


def spikingjelly():
    try:
        from spikingjelly.activation_based import ann2snn, functional
    except ImportError as err:
        raise SystemExit(f"spikingjelly is not installed ({err}); pip install -e '.[bench]'") from None
    return ann2snn, functional


def sj_convert(relu_model, loader, mode: str):
    ann2snn, _ = spikingjelly()
    converter = ann2snn.Converter(recipe=ann2snn.RateCodingRecipe(dataloader=loader, mode=mode))
    return converter.convert(relu_model.eval()).eval()


def sj_run(snn, x, timesteps: int) -> list[torch.Tensor]:
    """spikingjelly's own stepping (its examples): reset, then one call per step; the running
    sum's argmax at every t (its readout)."""
    _, functional = spikingjelly()
    functional.reset_net(snn)
    out, outs = None, []
    with torch.no_grad():
        for _ in range(timesteps):
            y = snn(x)
            out = y if out is None else out + y
            outs.append(out.clone())
    return outs


def maybe_fold(qann, x):
    return fold_batchnorm(qann, x[:1])[0]


def sim(snn, x, T):
    return simulate(snn, x, T)


# ---------------------------------------------------------------- throughput
def throughput(args, device) -> dict:
    torch.manual_seed(0)
    qann = use_kernels(create_model("resnet20", 10, make_activation("pqa")).to(device).eval(), args.kernels)
    relu = create_model("resnet20", 10, torch.nn.ReLU).to(device).eval()
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    calib = [(torch.randn(args.batch, 3, 32, 32, device=device), None) for _ in range(2)]
    ours = convert_to_snn(qann)
    folded = maybe_fold(qann, x)
    ours_fold = convert_to_snn(folded) if folded is not None else None
    theirs = sj_convert(relu, calib, "Max")

    xb = torch.randn(args.train_batch, 3, 32, 32, device=device)
    yb = torch.randint(0, 10, (args.train_batch,), device=device)
    train_nets = {k: create_model("resnet20", 10, act).to(device).train()
                  for k, act in (("pqa", make_activation("pqa")), ("relu", torch.nn.ReLU))}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in train_nets.items()}

    def train_step(kind, kernels="eager"):
        def step():
            use_kernels(train_nets[kind], kernels)
            opts[kind].zero_grad(set_to_none=True)
            F.cross_entropy(train_nets[kind](xb), yb).backward()
            opts[kind].step()
        return step

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    cases = {"ann_forward": no_grad(lambda: qann(x)), "relu_forward": no_grad(lambda: relu(x)),
             "train_pqa": train_step("pqa", "eager"), "train_relu": train_step("relu")}
    # train.py's default for runs of fused.AUTO_COMPILE_STEPS or more: the quantizer compiled
    compile_missing = fused.compile_unavailable(device.type)
    if not compile_missing:
        cases["train_pqa_compiled"] = train_step("pqa", "compile")
    for T in TIMESTEPS:
        cases[f"ours_T{T}"] = lambda T=T: sim(ours, x, T)
        if ours_fold is not None:
            cases[f"ours_fold_T{T}"] = lambda T=T: sim(ours_fold, x, T)
        cases[f"sj_T{T}"] = lambda T=T: sj_run(theirs, x, T)
    for fn in cases.values():   # warm-up (allocator, oneDNN/cuDNN choices)
        fn()
    times = interleaved(cases, args.rounds, device,
                        on_round=lambda r: print(f"round {r}/{args.rounds} done", flush=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for T in TIMESTEPS:
        row = {"measure": f"SNN images/s, T={T}", "ours": args.batch / med[f"ours_T{T}"],
               "spikingjelly": args.batch / med[f"sj_T{T}"]}
        row["ratio"] = row["ours"] / row["spikingjelly"]
        if f"ours_fold_T{T}" in med:
            row["ours_fold_bn"] = args.batch / med[f"ours_fold_T{T}"]
            row["ratio_fold_bn"] = row["ours_fold_bn"] / row["spikingjelly"]
        rows.append(row)
    for T in (1, 8):
        row = {"measure": f"SNN time at T={T} / own ANN forward", "ratio": med[f"ours_T{T}"] / med["ann_forward"]}
        if f"ours_fold_T{T}" in med:
            row["ratio_fold_bn"] = med[f"ours_fold_T{T}"] / med["ann_forward"]
        rows.append(row)
    rows.append({"measure": "training step, PQA / ReLU, eager kernels", "ratio": med["train_pqa"] / med["train_relu"]})
    if "train_pqa_compiled" in med:
        rows.append({"measure": "training step, PQA / ReLU, quantizer compiled (train.py's default for long runs)",
                     "ratio": med["train_pqa_compiled"] / med["train_relu"]})
    else:
        rows.append({"measure": f"training step, PQA / ReLU, quantizer compiled: not run ({compile_missing})"})
    rows.append({"measure": "ANN forward, PQA / ReLU", "ratio": med["ann_forward"] / med["relu_forward"]})
    return {"rows": rows, "median_seconds": med}


# ---------------------------------------------------------------- accuracy of a trained pair
def cifar(n_train: int, n_test: int):
    """(x_train, y_train, x_test, y_test, source): the first N images of each split."""
    if not NPZ.is_file():
        g = torch.Generator().manual_seed(0)
        templates = torch.randn(10, 3, 32, 32, generator=g)
        def make(n):
            y = torch.randint(0, 10, (n,), generator=g)
            return templates[y] + 0.8 * torch.randn(n, 3, 32, 32, generator=g), y
        return (*make(n_train), *make(n_test), "synthetic (CIFAR-10 .npz not found)")
    from PIL import Image
    d = np.load(NPZ)

    def decode(split, n):
        jpeg, off = d[f"{split}_jpeg"], d[f"{split}_offsets"]
        imgs = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes())).convert("RGB"))
                         for i in range(n)])
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
        return (x - mean[:, None, None]) / std[:, None, None], torch.from_numpy(d[f"{split}_labels"][:n]).long()
    return (*decode("train", n_train), *decode("test", n_test), f"CIFAR-10 ({NPZ.name})")


def train(model, x, y, epochs: int, batch: int, device):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb = x[idx].to(device)
            flip = torch.rand(len(idx), device=device) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), y[idx].to(device)).backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy_pair(args, device) -> dict:
    xtr, ytr, xte, yte, source = cifar(args.train_images, args.test_images)
    torch.manual_seed(0)
    ours = train(create_model("resnet20", 10, make_activation("pqa")).to(device), xtr, ytr,
                 args.train_epochs, args.train_batch, device)
    torch.manual_seed(0)
    relu = train(create_model("resnet20", 10, torch.nn.ReLU).to(device), xtr, ytr,
                 args.train_epochs, args.train_batch, device)
    snn = convert_to_snn(use_kernels(ours, args.kernels))
    calib = [(xtr[i:i + args.batch].to(device), None) for i in range(0, min(len(xtr), 20 * args.batch), args.batch)]
    theirs = {mode: sj_convert(relu, calib, mode) for mode in ("Max", "99.9%")}
    T = max(ACC_TIMESTEPS)
    correct = {k: torch.zeros(T) for k in ("ours_snn", *(f"sj_{m}" for m in theirs))}
    ann = {"ours_qann": 0, "relu_ann": 0}
    for i in range(0, len(xte), args.batch):
        xb, yb = xte[i:i + args.batch].to(device), yte[i:i + args.batch].to(device)
        with torch.no_grad():
            ann["ours_qann"] += (ours(xb).argmax(1) == yb).sum().item()
            ann["relu_ann"] += (relu(xb).argmax(1) == yb).sum().item()
        outs = simulate(snn, xb, T).outputs
        correct["ours_snn"] += (outs.argmax(-1) == yb).sum(1).float().cpu()
        for mode, net in theirs.items():
            correct[f"sj_{mode}"] += torch.tensor([(o.argmax(1) == yb).sum().item() for o in sj_run(net, xb, T)]).float()
    n = len(xte)
    return {"source": source, "train_images": len(xtr), "test_images": n, "epochs": args.train_epochs,
            "ann": {k: v / n for k, v in ann.items()},
            "snn": {k: {t: (v[t - 1] / n).item() for t in ACC_TIMESTEPS} for k, v in correct.items()}}


# ---------------------------------------------------------------- report
def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"ResNet-20, batch {result['batch']} (simulation) / {result['train_batch']} (training), "
             f"{result['rounds']} interleaved rounds (medians); {m['device']}, {m['threads']} threads, "
             f"torch {m['torch']}, spikingjelly {m['spikingjelly']}, kernels={result['kernels']}", ""]
    if result["throughput"]["rows"]:
        lines += ["| measure | pmsm-exp | pmsm-exp, fold_bn | spikingjelly | ratio (ours / sj) | ratio, fold_bn |",
                  "|---|---|---|---|---|---|"]
    for r in result["throughput"]["rows"]:
        def f(key, fmt="{:.1f}"):
            return fmt.format(r[key]) if key in r else "-"
        if "ours" in r:
            lines.append(f"| {r['measure']} | {f('ours')} | {f('ours_fold_bn')} | {f('spikingjelly')} | "
                         f"{f('ratio', '{:.2f}x')} | {f('ratio_fold_bn', '{:.2f}x')} |")
        else:
            lines.append(f"| {r['measure']} | {f('ratio', '{:.2f}x')} | {f('ratio_fold_bn', '{:.2f}x')} | - | - | - |")
    acc = result.get("accuracy")
    if acc:
        lines += ["", f"Accuracy after {acc['epochs']} epoch(s) on {acc['train_images']} training images of "
                      f"{acc['source']}, {acc['test_images']} test images: our QANN "
                      f"{100 * acc['ann']['ours_qann']:.2f}%, the ReLU ANN {100 * acc['ann']['relu_ann']:.2f}%", "",
                  "| SNN | " + " | ".join(f"T={t}" for t in ACC_TIMESTEPS) + " |",
                  "|---|" + "---|" * len(ACC_TIMESTEPS)]
        names = {"ours_snn": "pmsm-exp (PQA + AIF)", "sj_Max": "spikingjelly (ReLU, Max)",
                 "sj_99.9%": "spikingjelly (ReLU, 99.9%)"}
        for k, v in acc["snn"].items():
            lines.append(f"| {names.get(k, k)} | " + " | ".join(f"{100 * v.get(t, v.get(str(t))):.2f}%" for t in ACC_TIMESTEPS) + " |")
    lines += ["", "spikingjelly's QCFS module (`ann2snn.qcfs.SignedQCFSSequenceEncoder`) encodes a signed "
                  "activation as a spike sequence, not a CNN converter, and its `SpikeZIPTFQANNRecipe` accepts "
                  "model_family 'roberta' or 'vit' (their module trees): neither accepts our ResNet-20/VGG-16, "
                  "so the QCFS / ST-BIF+ side-by-side is not run."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kernels", default="eager", help="the SNN and ANN-forward rows' kernels: eager (evaluation's "
                    "default) | compile; the training rows run both")
    ap.add_argument("--train-epochs", type=int, default=0, help="0: throughput only")
    ap.add_argument("--train-images", type=int, default=10000)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads (0: torch's default); 1 on a machine shared with other jobs, where "
                         "OpenMP threads waiting on each other slow everything down many times")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import spikingjelly as sj_pkg
    from importlib.metadata import version
    result = {"batch": args.batch, "train_batch": args.train_batch, "rounds": args.rounds, "kernels": args.kernels,
              "machine": {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
                          or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "spikingjelly": version("spikingjelly"), "python": platform.python_version()}}
    del sj_pkg
    if not args.skip_throughput:
        result["throughput"] = throughput(args, device)
    else:
        result["throughput"] = {"rows": []}
    if args.train_epochs > 0:
        result["accuracy"] = accuracy_pair(args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peer.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (out / "peer.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
