"""Model registry: CIFAR-stem ResNets that return named outputs.

Every model is an `OpenSetNet`: a backbone mapping images to the pooled penultimate features `z`
(`forward_features`) and a head mapping `z` to logits (`forward_head`), the split that timm uses.
`forward` returns a `ModelOutput` whose fields never depend on flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (N, K) class scores of the known classes
    z: torch.Tensor  # (N, D) latent representation: pooled penultimate features


class OpenSetNet(nn.Module):
    def __init__(self, backbone: nn.Module, z_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(z_dim, num_classes)
        self.z_dim = z_dim  # width of z
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        z = self.forward_features(x)
        return ModelOutput(logits=self.forward_head(z), z=z)


ModelFactory = Callable[[int, int], OpenSetNet]  # (num_classes, in_channels) -> model
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def add(factory: ModelFactory) -> ModelFactory:
        MODELS[name] = factory
        return factory

    return add


def create_model(arch: str, num_classes: int, in_channels: int) -> OpenSetNet:
    return MODELS[arch](num_classes, in_channels)


# --- torchvision ResNets with the CIFAR stem: 3x3 stride-1 first conv, no max-pool ---

def _torchvision_resnet(builder: Callable[..., resnet.ResNet], in_channels: int) -> tuple[nn.Module, int]:
    net = builder(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    z_dim = net.fc.in_features
    net.fc = nn.Identity()  # the backbone ends at the pooled features; OpenSetNet owns the head
    return net, z_dim


def _register_torchvision(name: str, builder: Callable[..., resnet.ResNet]) -> None:
    @register_model(name)
    def factory(num_classes: int, in_channels: int) -> OpenSetNet:
        backbone, z_dim = _torchvision_resnet(builder, in_channels)
        return OpenSetNet(backbone, z_dim, num_classes)


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
    def factory(num_classes: int, in_channels: int) -> OpenSetNet:
        backbone = CifarResNet(blocks_per_stage, width, in_channels)
        return OpenSetNet(backbone, backbone.out_dim, num_classes)


_register_cifar("resnet8", 1, 16)  # 0.08 M parameters: CPU demos and tests
_register_cifar("resnet20", 3, 16)  # 0.27 M parameters
_register_cifar("resnet32", 5, 16)  # 0.46 M parameters
