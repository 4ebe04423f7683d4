import torch
import torch.nn.functional as F

from anomaly_repr.data.pipeline import DeviceBatches, Normalizer, random_crop, random_hflip


def test_normalizer_standardises_its_own_data():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    x = Normalizer.fit(images)(images)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)


def test_random_crop_is_a_window_of_the_reflect_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_hflip_flips_about_half_and_keeps_the_rest():
    x = torch.randn(400, 1, 4, 4)
    out = random_hflip(x, torch.Generator().manual_seed(1))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert (flipped | kept).all() and 150 < flipped.sum() < 250


def test_device_batches_cover_every_image_once_per_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 8, 8).contiguous()
    labels = torch.arange(10)
    norm = Normalizer(torch.zeros(1), torch.ones(1) / 255.0)  # identity on 0..255 values
    batches = DeviceBatches(images, labels, norm, batch_size=4, hflip=True, generator=torch.Generator())
    seen = []
    for x, y in batches:
        # crops and flips of a constant image keep each image paired with its label
        assert torch.allclose(x[:, 0, 4, 4], y.float(), atol=1e-4)
        seen += y.tolist()
    assert sorted(seen) == list(range(10)) and len(batches) == 3
