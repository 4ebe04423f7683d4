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
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock

from anomaly_repr import registry
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
MODELS: Registry[BackboneFactory] = registry.MODELS
register_model = MODELS.register


def build_backbone(arch: str, in_channels: int) -> tuple[nn.Module, int]:
    """A registered backbone and the width of its z."""
    return MODELS[arch](in_channels)


INIT_IMAGES = 5000  # training images that a data-dependent initialisation reads (patch whitening's covariance)


def init_from_images(model: nn.Module, images: torch.Tensor, normalizer: Callable[[torch.Tensor], torch.Tensor],
                     device: torch.device) -> None:
    """Before the first step: every part of `model` with a data-dependent initialisation (`init_from_images`)
    fits itself on `INIT_IMAGES` of `images` (uint8 training images of the classes it trains on), evenly
    spaced: the images come in pooled order, which for an image folder is class by class."""
    parts = [init for module in model.modules() if module is not model
             and callable(init := getattr(module, "init_from_images", None))]
    if parts:
        sample = images[torch.linspace(0, len(images) - 1, min(INIT_IMAGES, len(images))).long()].to(device)
        for init in parts:
            init(sample, normalizer)


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


# --- fastcnn: a wide, shallow network that keeps a CPU's matrix units busy (after Jordan 2024, airbench) ---
#
# A frozen patch-whitening convolution (2x2 patches, fitted on training images before the first step), then
# three stages of [3x3 conv, 2x2 max-pool, batch norm, GELU, 3x3 conv, batch norm, GELU], then a global max-pool
# to z. ResNet-20's 16-64 channels leave a CPU's bfloat16 units mostly idle; 64-256 channels at a few
# layers fill them. Batch norm learns a shift only (its scale is fixed at 1): with the scale free, weight
# decay and the high learning rate fight over the same degree of freedom.

class PatchWhitening(nn.Module):
    """A 2x2 convolution whose filters whiten image patches: the eigenvectors of the patches' covariance,
    scaled by 1/sqrt(eigenvalue), and their negatives (so that the GELU after it keeps both signs). The
    filters are a buffer (never trained); the bias is learned. `fit` sets the filters from images."""

    filters: torch.Tensor

    def __init__(self, in_channels: int, kernel: int = 2, eps: float = 5e-4):
        super().__init__()
        self.in_channels, self.kernel, self.eps = in_channels, kernel, eps
        dim = in_channels * kernel * kernel
        self.out_channels = 2 * dim
        identity = torch.eye(dim).view(dim, in_channels, kernel, kernel)
        self.register_buffer("filters", torch.cat([identity, -identity]))  # until fitted: the raw patch
        self.bias = nn.Parameter(torch.zeros(2 * dim))

    @torch.no_grad()
    def fit(self, images: torch.Tensor,
            normalizer: Callable[[torch.Tensor], torch.Tensor] = lambda x: x.float()) -> None:
        """Whitening filters from images (N, C, H, W) as the network reads them, `normalizer` applied (uint8
        images and the run's normaliser, say): the caller passes training images."""
        dim = self.in_channels * self.kernel ** 2
        total, outer, count = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64), 0
        for chunk in images.split(256):  # a chunk's patches at a time: large images would not fit at once
            patches = F.unfold(normalizer(chunk).float(), self.kernel).transpose(1, 2).reshape(-1, dim).double().cpu()
            total, outer, count = total + patches.sum(0), outer + patches.T @ patches, count + len(patches)
        mean = total / count
        covariance = outer / count - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        whitening = (eigenvectors / (eigenvalues.clamp_min(0) + self.eps).sqrt()).T.float()  # one filter a row
        filters = whitening.view(dim, self.in_channels, self.kernel, self.kernel)
        self.filters.copy_(torch.cat([filters, -filters]).to(self.filters.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.filters.to(x.dtype), self.bias.to(x.dtype))


def _shift_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels)
    norm.weight.requires_grad_(False)  # scale fixed at 1: the optimisers skip a parameter without a gradient
    return norm


def _pool(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool; a map already 1 pixel wide (small images, such as digits) passes as it is."""
    return F.max_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x


class ConvStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = _shift_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _shift_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(_pool(self.conv1(x))))
        return F.gelu(self.norm2(self.conv2(x)))


class FastCNN(nn.Module):
    """z is the global max-pool of the last stage times `z_scale`: the head is linear, so this is
    airbench's scaling of the logits (up to the head's bias). Unscaled, the max-pooled activations are
    large (|z|^2 in the hundreds), the head's steps grow with |z|^2, and learning rates that the
    shift-only batch norms allow break training (on CIFAR-10 split 0, 5 epochs at lr 0.8 ended at 0.55
    validation accuracy, against 0.76 at lr 0.4). Convolutions start as identities of their input channels
    (the rest random), as airbench's do."""

    z_scale = 1 / 9

    def __init__(self, in_channels: int, widths: tuple[int, int, int]):
        super().__init__()
        self.whiten = PatchWhitening(in_channels)
        stages, planes = [], self.whiten.out_channels
        for width in widths:
            stages.append(ConvStage(planes, width))
            planes = width
        self.stages = nn.Sequential(*stages)
        self.out_dim = planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                with torch.no_grad():
                    nn.init.dirac_(m.weight[:m.in_channels])

    def init_from_images(self, images: torch.Tensor, normalizer: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Data-dependent initialisation before the first step: `images` are uint8 training images of the
        classes the model trains on (never validation or test images)."""
        self.whiten.fit(images, normalizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(F.gelu(self.whiten(x)))
        return torch.amax(x, dim=(2, 3)) * self.z_scale  # global max-pool: z


def _register_fastcnn(name: str, widths: tuple[int, int, int]) -> None:
    @register_model(name)
    def factory(in_channels: int) -> tuple[nn.Module, int]:
        backbone = FastCNN(in_channels, widths)
        return backbone, backbone.out_dim


_register_fastcnn("fastcnn", (64, 256, 256))  # 1.97 M parameters; 0.24 GFLOP a 32x32 image, forward
_register_fastcnn("fastcnn_wide", (128, 384, 384))
