"""The built-in model architectures ``neuron-runtime compile`` can build, with seeded weights.

Two families: ``mlp`` (dense layers) and ``resnet`` (a ResNet-style CNN of bottleneck blocks,
NHWC like Keras).  ``resnet50`` is ``resnet`` at ResNet-50's real shape (224x224x3 input, base
width 64, blocks 3,4,6,3, 1000 classes: 25,557,032 parameters, counting batch-norm scale and
shift as parameters as torchvision does).  Size knobs let tests build tiny models that run in
milliseconds on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_runtime.layers import Array, LayerSpec

ARCHS = ("mlp", "resnet", "resnet50")

MLP_DEFAULTS: dict[str, Any] = {"input_dim": 64, "width": 256, "depth": 4, "classes": 10}
RESNET_DEFAULTS: dict[str, Any] = {
    "image_size": 224,
    "width": 64,
    "blocks": (3, 4, 6, 3),
    "classes": 1000,
}
# The residual branch's last batch-norm scale: small, so activations stay bounded through many
# blocks with random (untrained) weights, and softmax outputs stay informative.
RESIDUAL_SCALE = 0.2


@dataclass(frozen=True)
class BuiltModel:
    arch: str
    size: dict[str, Any]
    input_shape: tuple[int, ...]  # per example
    layers: list[LayerSpec]
    weights: dict[str, Array]  # "layer.param" -> array

    @property
    def param_count(self) -> int:
        return sum(layer.param_count for layer in self.layers)


def resolve_size(arch: str, size: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults merged with the given knobs; unknown knobs or values raise ValueError."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; built-in: {', '.join(ARCHS)}")
    given = {k: v for k, v in size.items() if v is not None}
    if arch == "resnet50" and given:
        raise ValueError(
            f"resnet50 has a fixed shape, so {', '.join(sorted(given))} cannot be set; "
            "use --arch resnet to choose sizes"
        )
    defaults = MLP_DEFAULTS if arch == "mlp" else RESNET_DEFAULTS
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"architecture {arch!r} has no size knob {', '.join(unknown)}; "
            f"its knobs are {', '.join(sorted(defaults))}"
        )
    merged = {**defaults, **given}
    for key, value in merged.items():
        values = value if isinstance(value, tuple | list) else (value,)
        if not values or any(not isinstance(v, int) or v <= 0 for v in values):
            raise ValueError(f"size knob {key}={value!r} must be positive integer(s)")
    if "blocks" in merged:
        merged["blocks"] = tuple(merged["blocks"])
    if arch != "mlp" and merged["image_size"] < 32:
        raise ValueError(
            f"image_size={merged['image_size']} is too small: a ResNet downsamples by 32"
        )
    return merged


def build(arch: str, seed: int = 0, **size: Any) -> BuiltModel:
    """Build an architecture's layers and weights from ``seed`` (same seed, same weights)."""
    resolved = resolve_size(arch, size)
    rng = np.random.default_rng(seed)
    if arch == "mlp":
        return _build_mlp(resolved, rng)
    return _build_resnet(arch, resolved, rng)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> Array:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))


def _build_mlp(size: dict[str, Any], rng: np.random.Generator) -> BuiltModel:
    dims = [size["input_dim"]] + [size["width"]] * size["depth"] + [size["classes"]]
    layers: list[LayerSpec] = []
    weights: dict[str, Array] = {}
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        name = "logits" if last else f"dense{i}"
        layers.append(
            LayerSpec(
                name=name,
                kind="dense",
                params={"w": (dims[i], dims[i + 1]), "b": (dims[i + 1],)},
                flops=2 * dims[i] * dims[i + 1],
                out_shape=(dims[i + 1],),
                config={"activation": "none" if last else "relu"},
            )
        )
        weights[f"{name}.w"] = _normal(rng, (dims[i], dims[i + 1]), dims[i])
        weights[f"{name}.b"] = np.zeros(dims[i + 1], dtype=np.float32)
    return BuiltModel("mlp", size, (dims[0],), layers, weights)


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _build_resnet(arch: str, size: dict[str, Any], rng: np.random.Generator) -> BuiltModel:
    image, width = size["image_size"], size["width"]
    layers: list[LayerSpec] = []
    weights: dict[str, Array] = {}

    def conv(layer: str, name: str, k: int, cin: int, cout: int, *, scale: float = 1.0) -> None:
        weights[f"{layer}.{name}"] = _normal(rng, (k, k, cin, cout), k * k * cin)
        bn = "bn" if name == "conv" else name.replace("conv", "bn")
        prefix = f"{bn}_" if name != "proj" else "proj_"
        weights[f"{layer}.{prefix}scale"] = np.full(cout, scale, dtype=np.float32)
        weights[f"{layer}.{prefix}shift"] = np.zeros(cout, dtype=np.float32)

    def params_of(layer: str) -> dict[str, tuple[int, ...]]:
        prefix = f"{layer}."
        return {k.removeprefix(prefix): v.shape for k, v in weights.items() if k.startswith(prefix)}

    h = _conv_out(image, 7, 2, 3)
    conv("stem", "conv", 7, 3, width)
    stem_flops = 2 * h * h * 7 * 7 * 3 * width
    h = _conv_out(h, 3, 2, 1)
    layers.append(LayerSpec("stem", "stem", params_of("stem"), stem_flops, (h, h, width)))
    cin = width
    for stage, count in enumerate(size["blocks"]):
        mid = width * 2**stage
        cout = 4 * mid
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"block{stage + 1}_{block + 1}"
            ho = _conv_out(h, 3, stride, 1)
            conv(name, "conv1", 1, cin, mid)
            conv(name, "conv2", 3, mid, mid)
            conv(name, "conv3", 1, mid, cout, scale=RESIDUAL_SCALE)
            flops = 2 * (h * h * cin * mid + ho * ho * 9 * mid * mid + ho * ho * mid * cout)
            if stride != 1 or cin != cout:
                conv(name, "proj", 1, cin, cout)
                flops += 2 * ho * ho * cin * cout
            layers.append(
                LayerSpec(
                    name, "bottleneck", params_of(name), flops, (ho, ho, cout), {"stride": stride}
                )
            )
            cin, h = cout, ho
    classes = size["classes"]
    weights["head.w"] = rng.standard_normal((cin, classes), dtype=np.float32) * np.float32(
        1.0 / np.sqrt(cin)
    )
    weights["head.b"] = np.zeros(classes, dtype=np.float32)
    layers.append(
        LayerSpec("head", "head", params_of("head"), 2 * cin * classes + h * h * cin, (classes,))
    )
    return BuiltModel(arch, size, (image, image, 3), layers, weights)
