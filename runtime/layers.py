"""The numpy kernels a simulated NeuronCore runs: dense, convolution (im2col), pooling, ResNet
bottleneck blocks.

Layers are described by plain data (``LayerSpec``: a kind, a small config, parameter shapes),
so a manifest can hold them and a worker can run them without importing any model code.  The
kernels are deterministic for a given input and batch size when BLAS runs one thread (as every
worker does), which is what makes "bit-identical on every group" hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

LAYER_KINDS = ("dense", "stem", "bottleneck", "head")


@dataclass(frozen=True)
class LayerSpec:
    """One pipeline-able unit of a model: the smallest thing a stage boundary can fall between."""

    name: str
    kind: str
    params: dict[str, tuple[int, ...]]
    flops: int  # per example (batch 1), multiply-adds counted as 2
    out_shape: tuple[int, ...]  # per example, without the batch dimension
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "params": {k: list(v) for k, v in self.params.items()},
            "flops": self.flops,
            "out_shape": list(self.out_shape),
            "config": dict(self.config),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LayerSpec:
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            params={str(k): tuple(int(d) for d in v) for k, v in dict(data["params"]).items()},
            flops=int(data["flops"]),
            out_shape=tuple(int(d) for d in data["out_shape"]),
            config=dict(data.get("config", {})),
        )

    @property
    def param_count(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.params.values())


def _span(start: int, count: int, stride: int) -> slice:
    """The slice picking ``count`` positions from ``start`` every ``stride``."""
    return slice(start, start + stride * (count - 1) + 1, stride)


def conv2d(x: Array, w: Array, stride: int, pad: int) -> Array:
    """NHWC convolution as one matrix product over im2col patches."""
    kh, kw, cin, cout = w.shape
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, width, _ = x.shape
    ho = (h - kh) // stride + 1
    wo = (width - kw) // stride + 1
    if kh == 1 and kw == 1:
        cols = np.ascontiguousarray(x[:, _span(0, ho, stride), _span(0, wo, stride), :])
    else:
        patches = [
            x[:, _span(dy, ho, stride), _span(dx, wo, stride), :]
            for dy in range(kh)
            for dx in range(kw)
        ]
        cols = np.concatenate(patches, axis=-1)
    out = cols.reshape(-1, kh * kw * cin) @ w.reshape(kh * kw * cin, cout)
    return out.reshape(n, ho, wo, cout)


def max_pool_3x3_s2(x: Array) -> Array:
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    _, h, w, _ = padded.shape
    ho, wo = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    out = padded[:, _span(0, ho, 2), _span(0, wo, 2), :]
    for dy in range(3):
        for dx in range(3):
            if dy or dx:
                out = np.maximum(out, padded[:, _span(dy, ho, 2), _span(dx, wo, 2), :])
    return out


def relu(x: Array) -> Array:
    return np.maximum(x, np.float32(0))


def softmax(x: Array) -> Array:
    shifted = x - x.max(axis=-1, keepdims=True)
    e: Array = np.exp(shifted)
    out: Array = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


def _affine(x: Array, scale: Array, shift: Array) -> Array:
    """Inference-time batch normalisation, folded to a per-channel scale and shift."""
    return x * scale + shift


def _activation(x: Array, name: str) -> Array:
    if name == "relu":
        return relu(x)
    if name == "softmax":
        return softmax(x)
    return x


def run_layer(spec: LayerSpec, p: Mapping[str, Array], x: Array) -> Array:
    """Apply one layer to a batch."""
    if spec.kind == "dense":
        return _activation(x @ p["w"] + p["b"], str(spec.config.get("activation", "none")))
    if spec.kind == "stem":
        y = relu(_affine(conv2d(x, p["conv"], 2, 3), p["bn_scale"], p["bn_shift"]))
        return max_pool_3x3_s2(y)
    if spec.kind == "bottleneck":
        stride = int(spec.config["stride"])
        y = relu(_affine(conv2d(x, p["conv1"], 1, 0), p["bn1_scale"], p["bn1_shift"]))
        y = relu(_affine(conv2d(y, p["conv2"], stride, 1), p["bn2_scale"], p["bn2_shift"]))
        y = _affine(conv2d(y, p["conv3"], 1, 0), p["bn3_scale"], p["bn3_shift"])
        if "proj" in p:
            shortcut = _affine(conv2d(x, p["proj"], stride, 0), p["proj_scale"], p["proj_shift"])
        else:
            shortcut = x
        return relu(y + shortcut)
    if spec.kind == "head":
        pooled = x.mean(axis=(1, 2), dtype=np.float32)
        return softmax(pooled @ p["w"] + p["b"])
    raise ValueError(f"layer {spec.name!r} has unknown kind {spec.kind!r}; known: {LAYER_KINDS}")
