"""Compiled model artifacts: a directory with ``manifest.json`` and ``weights.bin``.

The manifest says what the model is (architecture, sizes, seed), what it takes and returns
(tensor names, shapes, dtypes), its layers, and how they were split into pipeline stages, one per
NeuronCore it was compiled for.  ``weights.bin`` is every parameter as raw little-endian float32,
in layer order, each array at a 64-byte aligned offset the manifest records (the safetensors
idea).  Layer order makes each stage's weights one contiguous byte range, so swapping a stage
into a core (a context switch) is a single read, the way a real runtime DMAs a model's weights
from host memory; an archive format (.npz) would add parsing and CRC checks to every switch.
The file's SHA-256 is in the manifest, so a truncated or modified file is caught at load time
with a message naming the file, not deep inside a worker as a shape error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuron_runtime.archs import BuiltModel, build
from neuron_runtime.errors import ModelLoadError
from neuron_runtime.layers import Array, LayerSpec
from neuron_runtime.partition import balance_stages

FORMAT = "neuron-sim-model/v1"
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"
ALIGN = 64
INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, shape (-1 = variable batch dimension), numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Artifact:
    """A validated model directory."""

    path: Path
    name: str
    arch: str
    cores: int
    seed: int
    size: dict[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layers: tuple[LayerSpec, ...]
    stages: tuple[tuple[int, int], ...]
    weights_sha256: str
    weights_bytes: int
    tensors: dict[str, tuple[int, int]]  # "layer.param" -> (offset, nbytes) in weights.bin

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    def stage_layers(self, stage: int) -> tuple[LayerSpec, ...]:
        start, end = self.stages[stage]
        return self.layers[start:end]

    def boundary_shape(self, boundary: int) -> tuple[int, ...]:
        """Per-example shape of the tensor entering stage ``boundary`` (== cores: the output)."""
        if boundary == 0:
            return self.inputs[0].shape[1:]
        return self.layers[self.stages[boundary - 1][1] - 1].out_shape


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compile_model(
    arch: str, cores: int, out: str | Path, seed: int = 0, name: str | None = None, **size: Any
) -> Path:
    """Build ``arch`` with seeded weights, split it into ``cores`` stages, write the directory."""
    if cores < 1:
        raise ValueError(f"--cores must be a positive count, got {cores}")
    model = build(arch, seed, **size)
    stages = balance_stages([layer.flops for layer in model.layers], cores)
    return write_artifact(model, stages, Path(out), seed=seed, name=name or arch)


def write_artifact(
    model: BuiltModel, stages: list[tuple[int, int]], out: Path, *, seed: int, name: str
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS
    tensors: dict[str, list[int]] = {}
    with weights_path.open("wb") as f:
        for layer in model.layers:
            for param in layer.params:
                key = f"{layer.name}.{param}"
                data = np.ascontiguousarray(model.weights[key], dtype="<f4").tobytes()
                f.write(b"\0" * (-f.tell() % ALIGN))
                tensors[key] = [f.tell(), len(data)]
                f.write(data)
    size = {k: list(v) if isinstance(v, tuple) else v for k, v in model.size.items()}
    manifest = {
        "format": FORMAT,
        "name": name,
        "arch": model.arch,
        "seed": seed,
        "size": size,
        "cores": len(stages),
        "inputs": [{"name": INPUT_NAME, "shape": [-1, *model.input_shape], "dtype": "float32"}],
        "outputs": [
            {"name": OUTPUT_NAME, "shape": [-1, *model.layers[-1].out_shape], "dtype": "float32"}
        ],
        "layers": [layer.to_json() for layer in model.layers],
        "stages": [list(s) for s in stages],
        "stage_flops": [sum(layer.flops for layer in model.layers[a:b]) for a, b in stages],
        "parameters": model.param_count,
        "weights": {
            "file": WEIGHTS,
            "sha256": _sha256(weights_path),
            "bytes": weights_path.stat().st_size,
            "dtype": "float32",
            "tensors": tensors,
        },
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def _fail(path: Path, problem: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: {problem}. A model directory holds {MANIFEST} and {WEIGHTS} as written by "
        "`neuron-runtime compile`; recompile it if it was damaged."
    )


def _tensors(manifest_path: Path, raw: Any, what: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(manifest_path, f"'{what}' must be a non-empty list of tensors")
    specs = []
    for item in raw:
        try:
            specs.append(
                TensorSpec(
                    str(item["name"]),
                    tuple(int(d) for d in item["shape"]),
                    str(np.dtype(item["dtype"])),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail(
                manifest_path, f"tensor entry {item!r} in '{what}' is invalid ({exc})"
            ) from None
    return tuple(specs)


def load_artifact(path: str | Path, *, verify: bool = True) -> Artifact:
    """Read and check a model directory; every problem raises ModelLoadError naming the file."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise _fail(root, "not a directory (or it does not exist)")
    if not manifest_path.is_file():
        raise _fail(manifest_path, "missing")
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(manifest_path, f"not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _fail(manifest_path, "top level is not a JSON object")
    if data.get("format") != FORMAT:
        raise _fail(manifest_path, f"format is {data.get('format')!r}, expected {FORMAT!r}")
    required = ("name", "arch", "cores", "inputs", "outputs", "layers", "stages", "weights")
    missing = [k for k in required if k not in data]
    if missing:
        raise _fail(manifest_path, f"incomplete: missing {', '.join(missing)}")
    try:
        layers = tuple(LayerSpec.from_json(item) for item in data["layers"])
        stages = tuple((int(a), int(b)) for a, b in data["stages"])
        cores = int(data["cores"])
        weights_info: Mapping[str, Any] = data["weights"]
        sha, nbytes = str(weights_info["sha256"]), int(weights_info["bytes"])
        tensors = {str(k): (int(v[0]), int(v[1])) for k, v in weights_info["tensors"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(manifest_path, f"malformed layers/stages/weights entry ({exc!r})") from None
    _check_stages(manifest_path, stages, cores, len(layers))
    artifact = Artifact(
        path=root,
        name=str(data["name"]),
        arch=str(data["arch"]),
        cores=cores,
        seed=int(data.get("seed", 0)),
        size=dict(data.get("size", {})),
        inputs=_tensors(manifest_path, data["inputs"], "inputs"),
        outputs=_tensors(manifest_path, data["outputs"], "outputs"),
        layers=layers,
        stages=stages,
        weights_sha256=sha,
        weights_bytes=nbytes,
        tensors=tensors,
    )
    _check_tensors(manifest_path, artifact)
    if verify:
        _verify_weights(artifact)
    return artifact


def _check_stages(
    manifest_path: Path, stages: tuple[tuple[int, int], ...], cores: int, layers: int
) -> None:
    if cores != len(stages) or cores < 1:
        raise _fail(manifest_path, f"'cores' is {cores} but {len(stages)} stages are listed")
    expected = 0
    for start, end in stages:
        if start != expected or end <= start:
            raise _fail(manifest_path, f"stages {list(stages)} do not cover the layers in order")
        expected = end
    if expected != layers:
        raise _fail(manifest_path, f"stages cover {expected} layers but {layers} are listed")


def _check_tensors(manifest_path: Path, artifact: Artifact) -> None:
    """Every parameter has a byte range of the right size inside the file, stages contiguous."""
    for layer in artifact.layers:
        for param, shape in layer.params.items():
            key = f"{layer.name}.{param}"
            if key not in artifact.tensors:
                raise _fail(manifest_path, f"incomplete: no tensor entry for {key}")
            offset, nbytes = artifact.tensors[key]
            needed = 4 * int(np.prod(shape))
            if nbytes != needed or offset < 0:
                raise _fail(
                    manifest_path,
                    f"tensor {key} has {nbytes} bytes at {offset}, but float32{list(shape)} "
                    f"needs {needed}",
                )
            if offset + nbytes > artifact.weights_bytes:
                raise _fail(manifest_path, f"tensor {key} ends past the end of {WEIGHTS}")


def stage_byte_range(artifact: Artifact, stage: int) -> tuple[int, int]:
    ranges = [
        artifact.tensors[f"{layer.name}.{param}"]
        for layer in artifact.stage_layers(stage)
        for param in layer.params
    ]
    return min(o for o, _ in ranges), max(o + n for o, n in ranges)


def _verify_weights(artifact: Artifact) -> None:
    path = artifact.weights_path
    if not path.is_file():
        raise _fail(path, "missing")
    size = path.stat().st_size
    if size != artifact.weights_bytes:
        raise _fail(path, f"incomplete: {size} bytes, the manifest says {artifact.weights_bytes}")
    if _sha256(path) != artifact.weights_sha256:
        raise _fail(path, "corrupt: its SHA-256 does not match the manifest")


def read_stage_weights(artifact: Artifact, stage: int) -> dict[str, dict[str, Array]]:
    """One stage's parameters, read with one read of its contiguous byte range."""
    start, end = stage_byte_range(artifact, stage)
    buffer = bytearray(end - start)
    try:
        with artifact.weights_path.open("rb") as f:
            f.seek(start)
            got = f.readinto(buffer)
    except OSError as exc:
        raise _fail(artifact.weights_path, f"cannot be read ({exc})") from None
    if got != len(buffer):
        raise _fail(artifact.weights_path, f"incomplete: stage {stage} ends past the file")
    out: dict[str, dict[str, Array]] = {}
    for layer in artifact.stage_layers(stage):
        params: dict[str, Array] = {}
        for param, shape in layer.params.items():
            offset, nbytes = artifact.tensors[f"{layer.name}.{param}"]
            flat = np.frombuffer(buffer, "<f4", nbytes // 4, offset - start)
            params[param] = flat.reshape(shape).astype(np.float32, copy=False)
        out[layer.name] = params
    return out
