"""Quantized ViT in SpikeZIP-TF's layout, built on timm's VisionTransformer.

Quantizer sites (every one is the project's `PQA`):
    patch embedding                -> patch_quant
    block: norm1                   -> norm1_quant
           attn: q, k, v           -> q_quant, k_quant, v_quant
                 softmax           -> attn_quant      (unsigned: alpha=0, beta=1)
                 attention @ v     -> attn_v_quant
                 proj              -> proj_quant
           norm2                   -> norm2_quant
           mlp: fc1                -> act             (unsigned: a quantized ReLU in place of GELU)
                fc2                -> fc2_quant
    final norm                     -> norm_quant
Signed sites use the activation factory's own PQA (the paper keeps SpikeZIP-TF's
L=16, alpha=-1/2, beta=1/2-1/L for ViT-S); the unsigned ones copy its L.

Parameter names are timm's, so timm checkpoints load (`load_timm_weights`); the
quantizer thresholds (and a `calibrated` flag) are the only extra entries.

The model knows nothing about spikes. Its linear layers, LayerNorms, products,
softmax and token assembly have small types of their own only so that
`pmsm_exp.snn.spiking_vit` can register converters for them.
"""
from __future__ import annotations

import math
from typing import Callable

import timm
import torch
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pmsm_exp.models.hooks import forward_with_hooks
from pmsm_exp.models.registry import register_model
from pmsm_exp.models.weights import state_dict_of
from pmsm_exp.quant import PQA, pqa_layers

CALIBRATIONS = ("lsq", "max")


# ---- quantizer kinds ---------------------------------------------------------------------------

class QuantizerSet:
    """The three quantizer kinds of a ViT, derived from the activation factory.

    signed():  the factory's own PQA (alpha < 0)
    softmax(): PQA(L, 0, 1) starting at lambda = 1, as probabilities lie in [0, 1]
    relu():    PQA(L, 0, 1) starting at the factory's lambda: the MLP's quantized ReLU
    A full-precision factory (nn.ReLU, kind 'relu') gives the float ViT-ReLU instead.
    """

    def __init__(self, activation: Callable[[], nn.Module]):
        self.activation = activation
        proto = activation()
        self.quantized = isinstance(proto, PQA)
        if self.quantized:
            if proto.alpha >= 0:
                raise ValueError(f"the ViT needs signed quantizers after q, k, v and the LayerNorms: alpha < 0, got "
                                 f"alpha={proto.alpha} (SpikeZIP-TF / paper: alpha=-1/2, beta=1/2-1/L)")
            self.levels = proto.levels
            self.threshold = proto.threshold.item()
            self.learn = proto.threshold.requires_grad
        elif not isinstance(proto, nn.ReLU):
            raise ValueError(f"the ViT takes a PQA factory (make_activation('pqa', ...)) or nn.ReLU for full "
                             f"precision, got a factory of {type(proto).__name__}")

    def signed(self) -> nn.Module:
        return self.activation() if self.quantized else nn.Identity()

    def softmax(self) -> nn.Module:
        return PQA(self.levels, 0.0, 1.0, 1.0, self.learn) if self.quantized else nn.Identity()

    def relu(self) -> nn.Module:
        return PQA(self.levels, 0.0, 1.0, self.threshold, self.learn) if self.quantized else nn.ReLU()


# ---- layers with a type of their own (for conversion) ------------------------------------------

class ViTLinear(nn.Linear):
    """nn.Linear; own type so that the SNN adds the bias at the first timestep only."""


class PatchConv(nn.Conv2d):
    """The patch-embedding convolution; own type for the same reason as ViTLinear."""


class ViTLayerNorm(nn.LayerNorm):
    """LayerNorm with timm's ViT eps; the SNN normalizes the accumulated input."""

    def __init__(self, dim: int, eps: float = 1e-6, **kwargs):
        super().__init__(dim, eps=eps, **kwargs)


class AttnSoftmax(nn.Module):
    def forward(self, x):
        return x.softmax(dim=-1)


class MatMul(nn.Module):
    """a @ b of two activations; the SNN turns it into a product of two spike trains."""

    def forward(self, a, b):
        return a @ b


class AddTokens(nn.Module):
    """Prepend the class token, add the position embedding (timm's order: concat, then add)."""

    def forward(self, x, cls_token, pos_embed):
        return torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos_embed


# ---- transformer -------------------------------------------------------------------------------

class PQAAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, quant: QuantizerSet, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = ViTLinear(dim, 3 * dim)
        self.q_quant, self.k_quant, self.v_quant = quant.signed(), quant.signed(), quant.signed()
        self.qk = MatMul()
        self.softmax = AttnSoftmax()
        self.attn_quant = quant.softmax()
        self.attn_drop = nn.Dropout(attn_drop)
        self.attn_v = MatMul()
        self.attn_v_quant = quant.signed()
        self.proj = ViTLinear(dim, dim)
        self.proj_quant = quant.signed()
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # contiguous: quantizer outputs then have the memory layout of the SNN's neuron
        # outputs, so both run the products with the same kernels (bitwise-equal results)
        q, k, v = (t.contiguous() for t in qkv.unbind(0))
        q, k, v = self.q_quant(q), self.k_quant(k), self.v_quant(v)
        attn = self.qk(q, k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(self.attn_quant(self.softmax(attn)))
        x = self.attn_v(attn, v).transpose(1, 2).reshape(B, N, C)
        x = self.proj_quant(self.proj(self.attn_v_quant(x)))
        return self.proj_drop(x)


class PQAMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, quant: QuantizerSet, drop: float = 0.0):
        super().__init__()
        self.fc1 = ViTLinear(dim, hidden)
        self.act = quant.relu()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = ViTLinear(hidden, dim)
        self.fc2_quant = quant.signed()
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2_quant(self.fc2(x)))


class PQABlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, quant: QuantizerSet, mlp_ratio: float = 4.0,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = ViTLayerNorm(dim)
        self.norm1_quant = quant.signed()
        self.attn = PQAAttention(dim, num_heads, quant, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = ViTLayerNorm(dim)
        self.norm2_quant = quant.signed()
        self.mlp = PQAMlp(dim, int(dim * mlp_ratio), quant, proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.attn(self.norm1_quant(self.norm1(x))))
        return x + self.drop_path2(self.mlp(self.norm2_quant(self.norm2(x))))


class PQAViT(VisionTransformer):
    """timm's VisionTransformer (class-token pooling, learned position embedding) with
    PQA quantizers at SpikeZIP-TF's sites.

    calibrate: 'lsq' or 'max' sets every quantizer's lambda from the first training batch
    (see `calibrate_thresholds`); None keeps the factory's lambda. It runs once: the
    `calibrated` flag is saved with the weights.
    """

    snn_encoding = "first"  # the SNN sees the image at step 1 only; its answer is the sum of outputs

    def __init__(self, activation: Callable[[], nn.Module], num_classes: int = 10, img_size: int = 224,
                 patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, drop_path_rate: float = 0.0, weight_init: str = "",
                 calibrate: str | None = "lsq"):
        if calibrate not in (None, *CALIBRATIONS):
            raise ValueError(f"unknown calibrate={calibrate!r}; valid: None, {', '.join(CALIBRATIONS)}")
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         embed_dim=embed_dim, depth=0, num_heads=num_heads, drop_rate=drop_rate,
                         norm_layer=ViTLayerNorm, weight_init=weight_init)
        quant = QuantizerSet(activation)
        conv = self.patch_embed.proj
        self.patch_embed.proj = PatchConv(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride)
        self.patch_quant = quant.signed()
        self.tokens = AddTokens()
        self.blocks = nn.Sequential(*[
            PQABlock(embed_dim, num_heads, quant, mlp_ratio, proj_drop_rate, attn_drop_rate, rate)
            for rate in torch.linspace(0, drop_path_rate, depth).tolist()])
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.norm_quant = quant.signed()
        self.reset_classifier(num_classes)
        self.init_weights()  # timm's scheme (weight_init), now over the blocks built here too
        self.calibration = calibrate if quant.quantized else None
        self.register_buffer("calibrated", torch.tensor(False))

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        if global_pool not in (None, "token"):
            raise ValueError(f"PQAViT pools the class token only, got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.head = ViTLinear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        x = self.patch_quant(self.patch_embed(x))
        x = self.pos_drop(self.tokens(x, self.cls_token, self.pos_embed))
        return self.norm_quant(self.norm(self.blocks(x)))

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x):
        if self.training and self.calibration and not self.calibrated:
            calibrate_thresholds(self, x, self.calibration)
        return self.forward_head(self.forward_features(x))


# ---- threshold initialisation ------------------------------------------------------------------

def initial_threshold(z: torch.Tensor, q: PQA, method: str) -> torch.Tensor | None:
    """lambda for quantizer `q` from its input `z`, or None if z gives no scale.

    'lsq': LSQ's step 2*mean|z|/sqrt(max(bL, -aL)) (SpikeZIP-TF's init), lambda = L*step.
    'max': the step that puts the largest |z| on the end level, so nothing in z is clipped.
    """
    if method == "lsq":
        step = 2 * z.abs().mean() / math.sqrt(max(q.max_level, -q.min_level))
    elif method == "max":
        step = z.max() / q.max_level
        if q.min_level < 0:
            step = torch.maximum(step, z.min() / q.min_level)
    else:
        raise ValueError(f"unknown calibration {method!r}; valid: {', '.join(CALIBRATIONS)}")
    lam = step * q.levels
    return lam if torch.isfinite(lam) and lam > 0 else None


@torch.no_grad()
def calibrate_thresholds(model: nn.Module, x: torch.Tensor, method: str = "lsq") -> None:
    """Set every PQA's lambda from its input on batch `x`, in forward order, so each layer
    sees the already-calibrated layers before it (one eval-mode forward pass).
    Under DDP the ranks average each lambda."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()

    def set_threshold(q: PQA, inputs):
        z = inputs[0].detach()
        lam = initial_threshold(z.to(torch.promote_types(z.dtype, torch.float32)), q, method)
        if distributed:
            lam = torch.zeros((), device=z.device) if lam is None else lam.float()
            torch.distributed.all_reduce(lam)
            lam = lam / torch.distributed.get_world_size()
        if lam is not None and lam > 0:
            q.threshold.copy_(lam)

    if hasattr(model, "calibrated"):
        model.calibrated.fill_(True)
    hooks = [q.register_forward_pre_hook(set_threshold) for q in pqa_layers(model).values()]
    forward_with_hooks(model, x, hooks)


# ---- timm weights ------------------------------------------------------------------------------

def _listing(keys: list[str], limit: int = 12) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_timm_weights(model: PQAViT, source) -> list[str]:
    """Copy a timm ViT checkpoint (state dict, or a .pth/.safetensors file) into `model`.

    Quantizer thresholds may be absent (they keep their value; returned, so the caller
    knows what is still uncalibrated); any other missing, unexpected or mis-shaped key
    raises ValueError naming it.
    """
    state = state_dict_of(source)
    own = model.state_dict()
    thresholds = {f"{name}.threshold" for name in pqa_layers(model)}
    optional = thresholds | {"calibrated"}
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                  for k in state if k in own and state[k].shape != own[k].shape]
    problems = [f"{label}: {_listing(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)) if keys]
    if problems:
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    absent = sorted(thresholds - state.keys())
    if not absent and "calibrated" in own:
        model.calibrated.fill_(True)  # every lambda came from the checkpoint: keep them
    return absent


def _timm_pretrained(timm_name: str | None, model: PQAViT) -> dict[str, torch.Tensor]:
    if timm_name is None:
        raise ValueError("timm has no pretrained weights for this configuration; pass checkpoint=<file>")
    try:
        net = timm.create_model(timm_name, pretrained=True, num_classes=model.num_classes,
                                img_size=model.patch_embed.img_size, patch_size=model.patch_embed.patch_size)
    except OSError as e:
        raise RuntimeError(
            f"could not fetch timm's pretrained weights for '{timm_name}' (no internet, nothing in the Hugging Face "
            f"cache?). Where there is internet, save timm.create_model('{timm_name}', pretrained=True).state_dict() "
            f"and pass checkpoint=<that file> instead. Cause: {e}") from e
    return net.state_dict()


# ---- builders ----------------------------------------------------------------------------------

def _vit(num_classes, activation, config: dict, timm_name: str | None = None,
         pretrained: bool = False, checkpoint: str | None = None, **kwargs) -> PQAViT:
    if pretrained and checkpoint:
        raise ValueError("pass pretrained=True or checkpoint=<file>, not both")
    model = PQAViT(activation, num_classes=num_classes, **{**config, **kwargs})
    if pretrained:
        load_timm_weights(model, _timm_pretrained(timm_name, model))
    elif checkpoint:
        load_timm_weights(model, checkpoint)
    return model


VIT_S = dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)   # timm vit_small_patch16_224
VIT_TINY = dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4)


@register_model
def vit_s(num_classes: int = 10, activation: Callable[[], nn.Module] = nn.ReLU, **kwargs) -> PQAViT:
    """ViT-S/16: 224 px, patch 16, dim 384, 12 blocks, 6 heads; pretrained=True loads timm's weights."""
    return _vit(num_classes, activation, VIT_S, timm_name="vit_small_patch16_224", **kwargs)


@register_model
def vit_tiny(num_classes: int = 10, activation: Callable[[], nn.Module] = nn.ReLU, **kwargs) -> PQAViT:
    """A small ViT for native 32 px images (CIFAR, CPU runs): patch 4, dim 128, 4 blocks, 4 heads."""
    return _vit(num_classes, activation, VIT_TINY, **kwargs)
