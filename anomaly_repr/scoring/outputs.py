"""Extract once: one pass per model and split gives every output that any scorer reads.

`Outputs` holds z, the logits and the open-set labels, plus the named extras that the model's method
adds (`recon_error` for hybrids, `godin_h` / `godin_g` / `godin_h_perturbed` for G-ODIN, ...). The method
says how each extra is computed from a batch (`batch_extras`) or from a pass of its own (`extra_passes`);
this module only runs the passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_repr.data.pipeline import Normalizer, eval_batches
from anomaly_repr.data.split import UNKNOWN
from anomaly_repr.models.backbones import ModelOutput, OpenSetNet

CORE = ("z", "logits", "labels")
FinalLayer = tuple[np.ndarray, np.ndarray]  # (weight (K, D), bias (K,)) of a linear head: logits = z W^T + b


class Outputs:
    """z (N, D), logits (N, K), labels (N,: 0..K-1 known, -1 anomaly) and named extras (N, ...), as numpy;
    `final_layer`, the model's linear head, where it has one (scorers that recompute logits read it)."""

    def __init__(self, z: np.ndarray, logits: np.ndarray, labels: np.ndarray, final_layer: FinalLayer | None = None,
                 **extras: np.ndarray):
        self.z, self.logits, self.labels = z, logits, np.asarray(labels)
        self._final_layer = final_layer
        self.extras: dict[str, np.ndarray] = dict(extras)

    @property
    def final_layer(self) -> FinalLayer:
        if self._final_layer is None:
            raise AttributeError("these outputs come from a model without a linear final layer")
        return self._final_layer

    def __getattr__(self, name: str) -> np.ndarray:
        if not name.startswith("_") and name != "extras" and name in self.extras:
            return self.extras[name]
        raise AttributeError(f"these outputs have no {name!r}")

    def has(self, name: str) -> bool:
        if name == "final_layer":
            return self._final_layer is not None
        return name in CORE or name in self.extras

    def with_extras(self, **extras: np.ndarray) -> Outputs:
        return Outputs(self.z, self.logits, self.labels, self._final_layer, **(self.extras | extras))

    def rows(self, mask: np.ndarray) -> Outputs:
        """The outputs of the rows `mask` selects (a boolean mask or indices)."""
        return Outputs(self.z[mask], self.logits[mask], self.labels[mask], self._final_layer,
                       **{k: v[mask] for k, v in self.extras.items()})

    @property
    def is_anomaly(self) -> np.ndarray:
        return self.labels == UNKNOWN

    def arrays(self) -> dict[str, np.ndarray]:
        return {"z": self.z, "logits": self.logits, "labels": self.labels, **self.extras}

    def save(self, path: Path) -> None:
        layer = dict(zip(LAYER_KEYS, self._final_layer, strict=True)) if self._final_layer is not None else {}
        np.savez_compressed(path, **self.arrays(), **layer)  # type: ignore[arg-type]  # numpy's stub: **kwds

    @classmethod
    def load(cls, path: Path) -> Outputs:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        layer = tuple(arrays.pop(k) for k in LAYER_KEYS) if LAYER_KEYS[0] in arrays else None
        return cls(final_layer=layer, **arrays)  # type: ignore[arg-type]


LAYER_KEYS = ("final_layer_weight", "final_layer_bias")  # how `save` stores the final layer


BatchExtras = Callable[[ModelOutput, torch.Tensor], Mapping[str, torch.Tensor]]  # (model output, input) -> extras


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def batches(images: torch.Tensor, normalizer: Normalizer, device: torch.device,
            batch_size: int | None = None) -> Iterator[torch.Tensor]:
    """Normalised, channels-last evaluation batches on `device` (`batch_size` None: the device's own)."""
    for x in eval_batches(images, normalizer, batch_size, device):
        yield channels_last(x)


def final_layer(model: OpenSetNet) -> FinalLayer | None:
    """The model's head as (weight, bias) when the logits are linear in z (not G-ODIN's head, say)."""
    layer = model.final_linear()
    if layer is None:
        return None
    weight, bias = layer
    return weight.detach().float().cpu().numpy(), bias.detach().float().cpu().numpy()


# --- test-time augmentation: views of a normalised batch whose outputs are averaged ---

View = Callable[[torch.Tensor], torch.Tensor]


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(3)


def translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The images moved by (dy, dx) pixels (each -1, 0 or 1), the edge filled by reflection, as training's
    random crops of reflect-padded images do."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return padded[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


def tta_views(tta: str, flips: bool) -> list[View]:
    """The views of `tta` (none | flip | flip_translate), the image itself first: flips only where training
    flips (`flips`: not for digits), translations by one pixel down-right and up-left (Jordan 2024)."""
    shifts: list[View] = [identity]
    if tta == "flip_translate":
        shifts += [partial(translate, dy=1, dx=1), partial(translate, dy=-1, dx=-1)]
    if tta == "none" or not flips:
        return shifts
    return [view for shift in shifts for view in (shift, lambda x, shift=shift: hflip(shift(x)))]


@torch.no_grad()
def extract(model: OpenSetNet, images: torch.Tensor, labels: np.ndarray, normalizer: Normalizer,
            device: torch.device, batch_extras: BatchExtras | None = None, batch_size: int | None = None,
            views: Sequence[View] = (identity,), precision: torch.dtype | None = None) -> Outputs:
    """Run `model` once over uint8 `images`; `labels` are open-set labels (-1 = anomaly).
    z and the logits are the means over `views` (test-time augmentation; one pass per view), so that every
    scorer reads the same outputs; `batch_extras(out, x)` names the method's extra outputs of each batch,
    from the image itself (the first view). `precision`: bfloat16 autocast, or None for float32."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"z": [], "logits": []}
    for x in batches(images, normalizer, device, batch_size):
        with torch.autocast(device.type, dtype=precision or torch.bfloat16, enabled=precision is not None):
            outs = [model(channels_last(view(x))) for view in views]
            extras = batch_extras(outs[0], x) if batch_extras else {}
        named = {"z": torch.stack([o.z for o in outs]).mean(0), "logits": torch.stack([o.logits for o in outs]).mean(0),
                 **extras}
        for name, value in named.items():
            parts.setdefault(name, []).append(value.detach())
    arrays = {k: torch.cat(v).float().cpu().numpy() for k, v in parts.items()}
    return Outputs(labels=np.asarray(labels), final_layer=final_layer(model), **arrays)
