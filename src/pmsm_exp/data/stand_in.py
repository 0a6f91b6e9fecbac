"""Stand-in data sets: files in the exact layouts of CIFAR-10, CIFAR-100 and ImageNet, with random
pixels and cycling labels, so that an experiment whose data this machine lacks still runs end to end
through its real data module (BUDGET=smoke in sweeps/paper.sh). Nothing can be learnt from them.

    python -m pmsm_exp.data.stand_in --out DIR [--sets cifar10 cifar100 imagenet]

writes DIR/cifar-10-batches-py/, DIR/cifar-100-python/ (torchvision's pickled batches) and
DIR/imagenet/{train,val}/<wnid>/*.JPEG (ImageFolder, one image per class and split by default).
Existing stand-ins are kept (relaunching is cheap); DIR/STAND_IN says what they are.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

SETS = ("cifar10", "cifar100", "imagenet")
NOTE = "STAND_IN"


def _pickle(path: Path, rows: np.ndarray, labels: list[int], label_key: str) -> None:
    with open(path, "wb") as f:
        pickle.dump({"data": rows, label_key: labels}, f, protocol=2)


def write_cifar(root: Path, classes: int, train: int, test: int, seed: int = 0) -> Path:
    """CIFAR-10 (5 training batches) or CIFAR-100 (one `train` file) with `train` and `test` images."""
    rng = np.random.default_rng(seed)
    if classes == 10:
        folder, label_key = root / "cifar-10-batches-py", "labels"
        per = -(-train // 5)
        files = [(f"data_batch_{b}", per) for b in range(1, 6)] + [("test_batch", test)]
    else:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        files = [("train", train), ("test", test)]
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in files:
        _pickle(folder / name, rng.integers(0, 256, (n, 3072), dtype=np.uint8), [i % classes for i in range(n)],
                label_key)
    return folder


def write_imagenet(root: Path, classes: int = 1000, per_class: int = 1, size: int = 64, seed: int = 0) -> Path:
    """ImageFolder layout with `per_class` JPEGs of size x size per class in train/ and val/ (the data
    module resizes them as it does ImageNet's)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    folder = root / "imagenet"
    for split in ("train", "val"):
        for c in range(classes):
            d = folder / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.JPEG", quality=50)
    return folder


def write(out: Path, sets=SETS, train: int = 500, test: int = 200) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    done = set((out / NOTE).read_text().split()) if (out / NOTE).is_file() else set()
    for name in sets:
        if name in done:
            continue
        if name == "imagenet":
            write_imagenet(out)
        else:
            write_cifar(out, 10 if name == "cifar10" else 100, train, test)
        done.add(name)
        (out / NOTE).write_text(" ".join(sorted(done)) + "\n")
    return out


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m pmsm_exp.data.stand_in", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sets", nargs="*", choices=SETS, default=list(SETS))
    a = ap.parse_args(argv)
    out = write(a.out, a.sets)
    print(f"stand-in data ({', '.join(a.sets)}) in {out}")
    return out


if __name__ == "__main__":
    main()
