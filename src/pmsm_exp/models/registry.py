"""timm-style model registry: `@register_model` on a builder, `create_model(name, ...)`."""
from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 10, activation: Callable[[], nn.Module] = nn.ReLU, **kwargs) -> nn.Module:
    """Build a registered model; `activation` is a factory called once per activation site."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, activation=activation, **kwargs)
