"""VGG-16 for 32x32 inputs as the conversion literature uses it (average pooling)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from pmsm_exp.models.registry import register_model

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, layout, num_classes: int, activation: Callable[[], nn.Module],
                 in_channels: int = 3, hidden: int = 4096, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        for item in layout:
            if item == "M":
                layers.append(nn.AvgPool2d(2))
            else:
                layers += [nn.Conv2d(in_channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), activation()]
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels, hidden), activation(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), activation(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model
def vgg16(num_classes: int = 10, activation: Callable[[], nn.Module] = nn.ReLU, **kwargs) -> VGG:
    return VGG(VGG16_LAYOUT, num_classes, activation, **kwargs)
