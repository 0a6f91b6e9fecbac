"""SNN simulation speed: multi-step form against per-step calls and the QANN, in one run.

    python benchmarks/bench_simulate.py [--model resnet20] [--batch 64] [--timesteps 8] [--device cuda]

Prints images/s and ratios against the baseline (T separate QANN forward passes),
so the numbers compare within one machine and one run; nothing is asserted.
"""
import argparse
import time

import torch

from pmsm_exp.snn import convert_to_snn
from pmsm_exp.models import create_model
from pmsm_exp.quant import make_activation
from pmsm_exp.snn import simulate


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up (allocator, cuDNN heuristics)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--timesteps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    qann = create_model(a.model, 10, make_activation("pqa")).to(a.device).eval()
    snn = convert_to_snn(qann)
    x = torch.randn(a.batch, 3, 32, 32, device=a.device)
    T = a.timesteps

    def qann_t_times():
        with torch.no_grad():
            for _ in range(T):
                qann(x)

    cases = {
        f"QANN forward x{T} (baseline)": qann_t_times,
        f"SNN multi-step, T={T}": lambda: simulate(snn, x, T),
        f"SNN step by step (chunk=1), T={T}": lambda: simulate(snn, x, T, chunk=1),
    }
    base = None
    print(f"{a.model}, batch {a.batch}, T={T}, device {a.device}, torch {torch.__version__}")
    for name, fn in cases.items():
        seconds = timed(fn, a.repeats, a.device)
        base = base or seconds
        print(f"{name:<40} {a.batch / seconds:>10.1f} images/s   time ratio vs baseline {seconds / base:>6.2f}")


if __name__ == "__main__":
    main()
