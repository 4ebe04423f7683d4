import pytest
import torch

from anomaly_repr.models.backbones import MODELS, ModelOutput, create_model

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
    from anomaly_repr.models.backbones import register_model

    with pytest.raises(ValueError, match="'resnet8' is registered twice"):
        register_model("resnet8")(lambda in_channels: None)


# --- fastcnn: patch whitening fitted on training images of the classes it trains on ---------------------

def test_patch_whitening_whitens_the_patches_it_was_fitted_on():
    from anomaly_repr.models.backbones import PatchWhitening

    torch.manual_seed(0)
    mixing = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.4, 0.0], [0.5, 0.5, 0.3]])  # correlated channels
    images = torch.einsum("dc,nchw->ndhw", mixing, torch.randn(64, 3, 8, 8))
    whiten = PatchWhitening(3, eps=0.0)
    whiten.fit(images)
    out = whiten(images)[:, :12]  # the first half; the second is its negative
    flat = out.transpose(0, 1).reshape(12, -1)
    assert torch.allclose(torch.cov(flat), torch.eye(12), atol=0.05)
    assert torch.equal(whiten(images)[:, 12:], -out)
    # never trained, but kept with the weights: a buffer, in the state dict and not among the parameters
    assert "filters" in whiten.state_dict() and not any(p is whiten.filters for p in whiten.parameters())


def test_whitening_reads_no_validation_test_or_anomaly_image(tmp_path, monkeypatch):
    """A guarded reader: the whitening's input must be nominal training images, row for row."""
    import numpy as np

    from anomaly_repr.config import ExperimentConfig
    from anomaly_repr.engine.workflow import fit, prepare
    from anomaly_repr.models.backbones import FastCNN

    from conftest import rgb_folder

    cfg = ExperimentConfig(dataset="imagefolder", data_root=str(rgb_folder(tmp_path / "rgb")), arch="fastcnn",
                           epochs=1, batch_size=16, device="cpu", val_auroc_every=0)
    prep = prepare(cfg)
    split, labels = prep.split, prep.data.labels
    allowed = {bytes(image.numpy()) for image in prep.images(split.nominal(split.train, labels))}
    forbidden = np.concatenate([split.val, split.test, np.setdiff1d(split.train, split.nominal(split.train, labels))])
    assert len(forbidden) and not allowed & {bytes(image.numpy()) for image in prep.images(forbidden)}
    real, read = FastCNN.init_from_images, []

    def guarded(self, images, normalizer):
        for image in images:
            if bytes(image.cpu().numpy()) not in allowed:
                raise AssertionError("patch whitening read an image that is not a nominal training image")
        read.append(len(images))
        real(self, images, normalizer)

    monkeypatch.setattr(FastCNN, "init_from_images", guarded)
    fit(prep, tmp_path / "c.pt")
    assert read == [len(allowed)]
