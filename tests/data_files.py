"""Tiny CIFAR-10-layout files for data tests (torchvision's pickled batches)."""
import pickle
from pathlib import Path

import numpy as np


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0,
                  labels=None) -> Path:
    """Five training batches of `per_batch` random images and a test batch. Pixels are
    1..255 (no zeros) so padding is told apart; labels cycle through 0..9 unless given
    (a function i -> label over the whole training set)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    label_of = labels or (lambda i: i % 10)
    for b in range(1, 6):
        data = rng.integers(1, 256, (per_batch, 3072), dtype=np.uint8)
        ys = [int(label_of((b - 1) * per_batch + i)) for i in range(per_batch)]
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump({"data": data, "labels": ys, "batch_label": f"batch {b}",
                         "filenames": [f"{i}.png" for i in range(per_batch)]}, f, protocol=2)
    data = rng.integers(1, 256, (n_test, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": [i % 10 for i in range(n_test)]}, f, protocol=2)
    return root
