"""Where and in what precision a model runs, and its predictions on uint8 images (the validation pass)."""

from __future__ import annotations

import torch

from anomaly_repr.data.pipeline import Normalizer, eval_batches
from anomaly_repr.models.backbones import OpenSetNet


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16: AMD Zen 4 on; AMX: Intel Sapphire Rapids on).
    Elsewhere bfloat16 is emulated and slower than float32."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast precision of training: bfloat16 for amp=true, and for amp=auto on CUDA and on CPUs with
    native bfloat16; None (float32) otherwise."""
    if amp == "false":
        return None
    if amp == "true" or device.type == "cuda" or (device.type == "cpu" and bf16_native()):
        return torch.bfloat16
    return None


@torch.no_grad()
def predict(model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
            batch_size: int | None = None, precision: torch.dtype | None = None) -> torch.Tensor:
    """The model's float32 logits (N, K) of uint8 `images`, in eval mode, on the CPU; `precision`: the
    autocast dtype of the forward passes (`autocast_dtype`), None for float32."""
    model.eval()
    with torch.autocast(device.type, dtype=precision or torch.bfloat16, enabled=precision is not None):
        return torch.cat([model(x.contiguous(memory_format=torch.channels_last)).logits.float().cpu()
                          for x in eval_batches(images, normalizer, batch_size, device)])


def accuracy(model: OpenSetNet, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer,
             device: torch.device, batch_size: int | None = None, precision: torch.dtype | None = None) -> float:
    return hits(predict(model, images, normalizer, device, batch_size, precision), labels)


def hits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels.cpu()).float().mean().item()
