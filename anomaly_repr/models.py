"""Model registry: CIFAR-stem ResNet backbones, heads, and an optional reconstruction decoder.

Every model is an `OpenSetNet`: a backbone mapping images to the pooled penultimate features `z`
(`forward_features`) and a head mapping `z` to logits (`forward_head`), the split that timm uses.
`forward` returns a `ModelOutput`; its optional fields are filled by the model's parts (a decoder fills
`recon`, a G-ODIN head fills `h` and `g`), never by flags of the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock

from anomaly_repr.registry import Registry


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (N, K) class scores of the known classes; h / g for a G-ODIN head
    z: torch.Tensor  # (N, D) latent representation: pooled penultimate features
    recon: torch.Tensor | None = None  # (N, C, H, W) hybrid models: reconstruction of the normalised input
    h: torch.Tensor | None = None  # (N, K) G-ODIN: class similarities h_i(z)
    g: torch.Tensor | None = None  # (N,) G-ODIN: g(z) in (0, 1)


class GodinHead(nn.Module):
    """Generalized ODIN (Hsu et al. 2020): logits h_i(z) / g(z), g(z) = sigmoid(BN(linear(z)))."""

    def __init__(self, z_dim: int, num_classes: int, similarity: str):
        super().__init__()
        self.similarity = similarity  # cosine | inner | euclidean
        self.h = nn.Linear(z_dim, num_classes, bias=False)  # class vectors w_i; trained without weight decay
        self.g = nn.Sequential(nn.Linear(z_dim, 1), nn.BatchNorm1d(1), nn.Sigmoid())

    def parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.h.weight
        if self.similarity == "cosine":
            h = F.normalize(z, dim=1) @ F.normalize(w, dim=1).T
        elif self.similarity == "inner":
            h = z @ w.T
        else:  # negative squared euclidean distance
            h = -torch.cdist(z, w).pow(2)
        return h, self.g(z).squeeze(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, g = self.parts(z)
        return h / g[:, None]


class Decoder(nn.Module):
    """Reconstructs the normalised input image from z: linear to a coarse map, two 2x up-convolutions."""

    def __init__(self, z_dim: int, channels: int, size: int, width: int = 64):
        super().__init__()
        self.size, self.width, self.start = size, width, max(1, size // 4)
        self.fc = nn.Linear(z_dim, width * self.start * self.start)
        self.up = nn.Sequential(
            nn.ReLU(inplace=True), nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1),
            nn.BatchNorm2d(width // 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width // 2, channels, 4, stride=2, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.up(self.fc(z).view(-1, self.width, self.start, self.start))
        if x.shape[-1] != self.size:  # sizes that are not a multiple of 4
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x


class OpenSetNet(nn.Module):
    def __init__(self, backbone: nn.Module, z_dim: int, head: nn.Module, decoder: Decoder | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.decoder = decoder
        self.z_dim = z_dim  # width of z

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        z = self.forward_features(x)
        recon = self.decoder(z) if self.decoder is not None else None
        if isinstance(self.head, GodinHead):
            h, g = self.head.parts(z)
            return ModelOutput(logits=h / g[:, None], z=z, recon=recon, h=h, g=g)
        return ModelOutput(logits=self.head(z), z=z, recon=recon)


BackboneFactory = Callable[[int], tuple[nn.Module, int]]  # in_channels -> (backbone, width of z)
MODELS: Registry[BackboneFactory] = Registry()
register_model = MODELS.register


def create_model(arch: str, num_classes: int, in_channels: int, head: str = "linear", godin_h: str = "cosine",
                 decoder_size: int = 0) -> OpenSetNet:
    """A registered backbone with a `head` (linear | godin); decoder_size > 0 adds the hybrid decoder."""
    backbone, z_dim = MODELS[arch](in_channels)
    head_module = GodinHead(z_dim, num_classes, godin_h) if head == "godin" else nn.Linear(z_dim, num_classes)
    decoder = Decoder(z_dim, in_channels, decoder_size) if decoder_size else None
    return OpenSetNet(backbone, z_dim, head_module, decoder)


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
