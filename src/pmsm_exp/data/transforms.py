"""Per-image transforms used by the CPU (loader-worker) path."""
from __future__ import annotations

import torch
from torch import Tensor


class Cutout:
    """Zero one random ``size`` x ``size`` square (DeVries & Taylor, 2017).

    The centre may lie near the border, so the hole is clipped there, as in
    the original. Applied after normalisation, so 0 means "mean colour".
    """

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.size // 2
        y0, y1 = max(cy - half, 0), min(cy - half + self.size, h)
        x0, x1 = max(cx - half, 0), min(cx - half + self.size, w)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0
        return img

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"
