import numpy as np
import pytest

from neuron_runtime.archs import build, resolve_size

# ResNet-50 at its real shape: torchvision counts 25,557,032 parameters (conv weights, batch-norm
# scale and shift, the 2048x1000 classifier with bias).
RESNET50_PARAMETERS = 25_557_032


def test_resnet50_has_the_real_shape() -> None:
    model = build("resnet50")
    assert model.param_count == RESNET50_PARAMETERS
    assert model.input_shape == (224, 224, 3)
    names = [layer.name for layer in model.layers]
    assert names[0] == "stem" and names[-1] == "head"
    assert len(names) == 1 + 3 + 4 + 6 + 3 + 1
    shapes = {layer.name: layer.out_shape for layer in model.layers}
    assert shapes["stem"] == (56, 56, 64)
    assert shapes["block1_3"] == (56, 56, 256)
    assert shapes["block2_1"] == (28, 28, 512)
    assert shapes["block3_6"] == (14, 14, 1024)
    assert shapes["block4_3"] == (7, 7, 2048)
    assert shapes["head"] == (1000,)
    assert model.weights["stem.conv"].shape == (7, 7, 3, 64)
    assert model.weights["block2_1.proj"].shape == (1, 1, 256, 512)
    assert model.weights["head.w"].shape == (2048, 1000)
    # About 4.1 billion multiply-adds per image, as published for ResNet-50.
    assert 8.0e9 < sum(layer.flops for layer in model.layers) < 8.4e9


@pytest.mark.parametrize(
    ("arch", "size", "layers", "params"),
    [
        ("mlp", {}, 5, 64 * 256 + 256 + 3 * (256 * 256 + 256) + 256 * 10 + 10),
        ("mlp", {"input_dim": 4, "width": 8, "depth": 1, "classes": 2}, 2, 4 * 8 + 8 + 8 * 2 + 2),
        ("resnet", {"image_size": 32, "width": 4, "blocks": (1, 1), "classes": 3}, 4, None),
    ],
    ids=["mlp-defaults", "mlp-tiny", "resnet-tiny"],
)
def test_size_knobs(arch: str, size: dict[str, object], layers: int, params: int | None) -> None:
    model = build(arch, 0, **size)
    assert len(model.layers) == layers
    assert model.param_count == sum(a.size for a in model.weights.values())
    if params is not None:
        assert model.param_count == params


def test_weights_come_from_the_seed() -> None:
    a, b, c = build("mlp", 1), build("mlp", 1), build("mlp", 2)
    np.testing.assert_array_equal(a.weights["dense0.w"], b.weights["dense0.w"])
    assert not np.array_equal(a.weights["dense0.w"], c.weights["dense0.w"])


@pytest.mark.parametrize(
    ("arch", "size", "message"),
    [
        ("vgg", {}, "unknown architecture 'vgg'"),
        ("resnet50", {"width": 8}, "fixed shape"),
        ("mlp", {"image_size": 8}, "no size knob image_size"),
        ("mlp", {"width": 0}, "width=0 must be positive"),
        ("resnet", {"image_size": 16}, "too small"),
        ("resnet", {"blocks": (1, 0)}, "blocks"),
    ],
    ids=["unknown-arch", "resnet50-fixed", "wrong-knob", "zero-width", "tiny-image", "zero-block"],
)
def test_bad_sizes(arch: str, size: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_size(arch, size)
