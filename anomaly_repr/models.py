"""Backbone registry (CIFAR-stem ResNets) and the network every method builds on.

Every model is an `OpenSetNet`: a backbone mapping images to the pooled penultimate features `z`
(`forward_features`) and a head mapping `z` to outputs (`forward_head`), the split that timm uses.
`forward` returns a `ModelOutput`; its extras are filled by the parts a method adds (a decoder fills
`recon`, a G-ODIN head fills `h` and `g`: see `anomaly_repr/methods/`), never by flags of the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock

from anomaly_repr.registry import Registry


@dataclass
class ModelOutput:
    """What a model returns: logits and z always, plus the named extras its method adds (a decoder's
    `recon`, G-ODIN's `h` and `g`, ...). An extra reads as an attribute; one the model lacks reads None."""

    logits: torch.Tensor  # (N, K) class scores of the classes the model was trained on
    z: torch.Tensor  # (N, D) latent representation: pooled penultimate features
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getattr__(self, name: str) -> torch.Tensor | None:
        if name.startswith("_") or name == "extras":  # copy and pickle probe dunders before __init__ ran
            raise AttributeError(name)
        return self.extras.get(name)


class OpenSetNet(nn.Module):
    """A registered backbone (images -> z) and a head (z -> logits). Methods that add outputs subclass
    it and extend `forward_head`; the parameter names `backbone.*` and `head.*` stay the same for all."""

    def __init__(self, backbone: nn.Module, z_dim: int, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.z_dim = z_dim  # width of z

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=self.head(z), z=z)

    def served_outputs(self, out: ModelOutput) -> dict[str, torch.Tensor]:
        """The (N, k) outputs the served model returns, side by side in this order: the class logits, then
        whatever a method's network adds (an auxiliary head's logits, ...)."""
        return {"logits": out.logits}

    def final_linear(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(weight (K, D), bias (K,)) when the logits are z W^T + b (a linear head; not G-ODIN's), else None."""
        if not isinstance(self.head, nn.Linear):
            return None
        bias = self.head.bias if self.head.bias is not None else torch.zeros(self.head.out_features)
        return self.head.weight, bias

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Outputs leave the model in float32, also under bfloat16 autocast: losses, softmax and scorers
        downstream stay float32."""
        out = self.forward_head(self.forward_features(x))
        return ModelOutput(out.logits.float(), out.z.float(), {k: v.float() for k, v in out.extras.items()})


BackboneFactory = Callable[[int], tuple[nn.Module, int]]  # in_channels -> (backbone, width of z)
MODELS: Registry[BackboneFactory] = Registry()
register_model = MODELS.register


def build_backbone(arch: str, in_channels: int) -> tuple[nn.Module, int]:
    """A registered backbone and the width of its z."""
    return MODELS[arch](in_channels)


def create_model(arch: str, num_classes: int, in_channels: int) -> OpenSetNet:
    """A registered backbone with a linear head: the plain classifier."""
    backbone, z_dim = build_backbone(arch, in_channels)
    return OpenSetNet(backbone, z_dim, nn.Linear(z_dim, num_classes))


# --- torchvision ResNets with the CIFAR stem: 3x3 stride-1 first conv, no max-pool ---

def _torchvision_resnet(builder: Callable[..., resnet.ResNet], in_channels: int) -> tuple[nn.Module, int]:
    net = builder(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    z_dim = net.fc.in_features
    net.fc = nn.Identity()  # the backbone ends at the pooled features; OpenSetNet owns the head
    return net, z_dim


def _register_torchvision(name: str, builder: Callable[..., resnet.ResNet]) -> None:
    register_model(name)(lambda in_channels: _torchvision_resnet(builder, in_channels))


for _name in ("resnet18", "resnet34", "resnet50"):
    _register_torchvision(_name, getattr(resnet, _name))


# --- small CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of n basic blocks, widths 16/32/64 ---

class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, width: int, in_channels: int):
        super().__init__()
        widths = [width, 2 * width, 4 * width]
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        planes = width
        for stage, out in enumerate(widths):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                downsample = None
                if stride != 1 or planes != out:  # projection shortcut (option B)
                    downsample = nn.Sequential(nn.Conv2d(planes, out, 1, stride=stride, bias=False),
                                               nn.BatchNorm2d(out))
                layers.append(BasicBlock(planes, out, stride=stride, downsample=downsample))
                planes = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_dim = planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _register_cifar(name: str, blocks_per_stage: int, width: int) -> None:
    @register_model(name)
    def factory(in_channels: int) -> tuple[nn.Module, int]:
        backbone = CifarResNet(blocks_per_stage, width, in_channels)
        return backbone, backbone.out_dim


_register_cifar("resnet8", 1, 16)  # 0.08 M parameters: CPU demos and tests
_register_cifar("resnet20", 3, 16)  # 0.27 M parameters
_register_cifar("resnet32", 5, 16)  # 0.46 M parameters
