import pytest
import torch

from anomaly_repr.models import MODELS, ModelOutput, create_model

SMALL = [name for name in sorted(MODELS) if name in ("resnet8", "resnet20", "resnet32")]


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("channels, size", [(3, 32), (1, 8)])
def test_every_model_returns_named_outputs(arch, channels, size):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5, in_channels=channels).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 5) and out.z.shape == (2, model.z_dim)
    with torch.no_grad():
        assert torch.allclose(model.forward_head(model.forward_features(x)).logits, out.logits)


def test_registry_has_cifar_stem_torchvision_resnets():
    for arch, z_dim in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)):
        model = create_model(arch, 6, 3)
        assert model.z_dim == z_dim
        assert model.backbone.conv1.kernel_size == (3, 3) and model.backbone.conv1.stride == (1, 1)
        assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    assert {"resnet8", "resnet20"} <= set(SMALL)


def test_a_name_cannot_be_registered_twice():
    from anomaly_repr.models import register_model

    with pytest.raises(ValueError, match="'resnet8' is registered twice"):
        register_model("resnet8")(lambda in_channels: None)
