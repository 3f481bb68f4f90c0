import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neuron_runtime import ModelLoadError, compile_model
from neuron_runtime.archs import build
from neuron_runtime.artifact import load_artifact, read_stage_weights, stage_byte_range


def test_compile_writes_a_loadable_pipelined_artifact(tmp_path: Path) -> None:
    out = compile_model("mlp", 3, tmp_path / "m", seed=7, width=8, depth=4, input_dim=4)
    artifact = load_artifact(out)
    assert (artifact.arch, artifact.cores, artifact.seed) == ("mlp", 3, 7)
    assert [t.name for t in artifact.inputs] == ["input"]
    assert artifact.inputs[0].shape == (-1, 4)
    assert artifact.outputs[0].shape == (-1, 10)
    assert artifact.outputs[0].dtype == "float32"
    assert len(artifact.stages) == 3
    weights = read_stage_weights(artifact, 2)
    assert set(weights) == {layer.name for layer in artifact.stage_layers(2)}


def test_resnet_stages_are_balanced_by_flops(tmp_path: Path) -> None:
    out = compile_model("resnet", 4, tmp_path / "r", image_size=64, width=8)
    manifest = json.loads((out / "manifest.json").read_text())
    stage_flops = manifest["stage_flops"]
    layer_flops = [layer["flops"] for layer in manifest["layers"]]
    assert sum(stage_flops) == sum(layer_flops)
    # No stage carries more than the even share plus the biggest single layer.
    assert max(stage_flops) <= sum(layer_flops) / 4 + max(layer_flops)


@pytest.mark.slow
def test_resnet50_compiles_with_its_real_parameter_count(tmp_path: Path) -> None:
    out = compile_model("resnet50", 4, tmp_path / "r50")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"] == 25_557_032
    assert manifest["inputs"][0]["shape"] == [-1, 224, 224, 3]
    assert manifest["outputs"][0]["shape"] == [-1, 1000]
    assert load_artifact(out).cores == 4


def _break_manifest(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    manifest = path / "manifest.json"
    data = json.loads(manifest.read_text())
    change(data)
    manifest.write_text(json.dumps(data))


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


CORRUPTIONS: list[tuple[str, Callable[[Path], object], str, str]] = [
    ("no-manifest", lambda p: (p / "manifest.json").unlink(), "manifest.json", "missing"),
    ("bad-json", lambda p: (p / "manifest.json").write_text("{not json"), "manifest.json",
     "not readable JSON"),
    ("wrong-format", lambda p: _break_manifest(p, lambda d: d.update(format="x")),
     "manifest.json", "format is 'x'"),
    ("no-stages", lambda p: _break_manifest(p, lambda d: d.pop("stages")), "manifest.json",
     "missing stages"),
    ("stages-gap", lambda p: _break_manifest(p, lambda d: d.update(stages=[[0, 1], [2, 4]])),
     "manifest.json", "do not cover"),
    ("cores-mismatch", lambda p: _break_manifest(p, lambda d: d.update(cores=3)),
     "manifest.json", "'cores' is 3"),
    ("no-weights", lambda p: (p / "weights.bin").unlink(), "weights.bin", "missing"),
    ("truncated", lambda p: (p / "weights.bin").write_bytes((p / "weights.bin").read_bytes()[:99]),
     "weights.bin", "incomplete"),
    ("flipped-byte", lambda p: _flip_byte(p / "weights.bin"), "weights.bin", "corrupt"),
    ("not-a-dir", lambda p: None, "nowhere", "not a directory"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "file", "problem"),
    [c[1:] for c in CORRUPTIONS],
    ids=[c[0] for c in CORRUPTIONS],
)
def test_corrupt_or_incomplete_artifacts_name_the_file_and_problem(
    tmp_path: Path, damage: Callable[[Path], object], file: str, problem: str
) -> None:
    out = compile_model("mlp", 2, tmp_path / "m", width=8, depth=3, input_dim=4)
    damage(out)
    target = tmp_path / "nowhere" if file == "nowhere" else out
    with pytest.raises(ModelLoadError) as info:
        load_artifact(target)
    message = str(info.value)
    assert file in message
    assert problem in message


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t.pop("logits.b"), "no tensor entry for logits.b"),
        (lambda t: t.update({"logits.b": [0, 4]}), "tensor logits.b has 4 bytes"),
        (lambda t: t.update({"logits.b": [10**9, 8]}), "ends past the end"),
    ],
    ids=["missing-entry", "wrong-size", "past-the-end"],
)
def test_bad_tensor_table_is_reported(
    tmp_path: Path, change: Callable[[dict[str, list[int]]], object], problem: str
) -> None:
    out = compile_model("mlp", 1, tmp_path / "m", width=8, depth=1, input_dim=4, classes=2)

    def edit(data: dict[str, Any]) -> None:
        change(data["weights"]["tensors"])

    _break_manifest(out, edit)
    with pytest.raises(ModelLoadError) as info:
        load_artifact(out)
    assert "manifest.json" in str(info.value) and problem in str(info.value)


def test_stage_weights_are_one_contiguous_range(tmp_path: Path) -> None:
    out = compile_model("resnet", 3, tmp_path / "r", image_size=32, width=4, blocks=(1, 1, 1))
    artifact = load_artifact(out)
    ends = [stage_byte_range(artifact, s) for s in range(3)]
    assert ends[0][0] == 0 and ends[-1][1] == artifact.weights_bytes
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends))
    built = build("resnet", 0, image_size=32, width=4, blocks=(1, 1, 1))
    for stage in range(3):
        for layer, params in read_stage_weights(artifact, stage).items():
            for param, array in params.items():
                np.testing.assert_array_equal(array, built.weights[f"{layer}.{param}"])
