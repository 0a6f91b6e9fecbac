"""Architectures. Each module registers its builders on import."""
from pmsm_exp.models.registry import create_model, list_models, register_model
from pmsm_exp.models import resnet, vgg  # noqa: F401  (registration)
from pmsm_exp.models import vit  # noqa: F401  (registration)

__all__ = ["create_model", "list_models", "register_model"]
