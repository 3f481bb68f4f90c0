from pathlib import Path

import pytest

from neuron_runtime import RuntimeConfigError
from neuron_runtime.config import config_from_env, default_state_dir


@pytest.mark.parametrize(
    ("env", "node", "visible", "sizes"),
    [
        ({}, 4, None, (4,)),
        ({"NEURON_SIM_CORES": "16"}, 16, None, (4,)),
        ({"NEURON_SIM_CORES": "2"}, 2, None, (2,)),
        ({"NEURON_SIM_INSTANCE_TYPE": "inf1.6xlarge"}, 16, None, (4,)),
        ({"NEURON_SIM_INSTANCE_TYPE": "inf2.xlarge"}, 2, None, (2,)),
        (
            {"NEURON_SIM_CORES": "16", "NEURON_SIM_INSTANCE_TYPE": "inf1.6xlarge"},
            16, None, (4,),
        ),
        ({"NEURON_SIM_CORES": "16", "NEURONCORE_GROUP_SIZES": "2,4,6,4"}, 16, None, (2, 4, 6, 4)),
        ({"NEURON_SIM_CORES": "16", "NEURONCORE_GROUP_SIZES": "16x1"}, 16, None, (1,) * 16),
        ({"NEURONCORE_GROUP_SIZES": "[1,2,1]"}, 4, None, (1, 2, 1)),
        ({"NEURON_SIM_CORES": "16", "NEURON_RT_VISIBLE_CORES": "4-7"}, 16, (4, 5, 6, 7), (4,)),
        ({"NEURON_SIM_CORES": "16", "NEURON_RT_VISIBLE_CORES": "2,3,8"}, 16, (2, 3, 8), (3,)),
        ({"NEURON_SIM_CORES": "16", "NEURON_RT_VISIBLE_CORES": "3"}, 16, (3,), (1,)),
        (
            {"NEURON_SIM_CORES": "16", "NEURON_RT_VISIBLE_CORES": "0-1,8",
             "NEURONCORE_GROUP_SIZES": "2,1"},
            16, (0, 1, 8), (2, 1),
        ),
    ],
    ids=[
        "defaults", "count", "small-node", "instance-type", "inf2", "count-and-type-agree",
        "seed-2464", "AxB", "brackets", "visible-range", "visible-list", "visible-one",
        "visible-mixture",
    ],
)  # fmt: skip
def test_config_from_env(
    env: dict[str, str], node: int, visible: tuple[int, ...] | None, sizes: tuple[int, ...]
) -> None:
    config = config_from_env(env)
    assert (config.node_cores, config.visible_cores, config.group_sizes) == (node, visible, sizes)


def test_defaults_are_documented_values() -> None:
    config = config_from_env({})
    assert config.state_dir == default_state_dir()
    assert config.core_memory_bytes == 8 * 1024 * 1024
    assert (config.scheduler, config.max_streak) == ("switch-aware", 32)
    assert "default" in config.group_sizes_text


def test_knobs_are_read() -> None:
    config = config_from_env(
        {
            "NEURON_SIM_STATE_DIR": "/x/y",
            "NEURON_SIM_CORE_MEMORY_MB": "0.5",
            "NEURON_SIM_SCHEDULER": "fifo",
            "NEURON_SIM_MAX_STREAK": "3",
        }
    )
    assert config.state_dir == Path("/x/y")
    assert config.core_memory_bytes == 512 * 1024
    assert (config.scheduler, config.max_streak) == ("fifo", 3)


@pytest.mark.parametrize(
    ("env", "quoted", "hint"),
    [
        ({"NEURONCORE_GROUP_SIZES": "2,,4"}, "'2,,4'", "16x1"),
        ({"NEURONCORE_GROUP_SIZES": "two"}, "'two'", "[1,2,1]"),
        ({"NEURON_RT_VISIBLE_CORES": "4-2"}, "'4-2'", "inclusive range"),
        ({"NEURON_RT_VISIBLE_CORES": "a"}, "'a'", "comma list"),
        ({"NEURON_RT_VISIBLE_CORES": "7"}, "'7'", "cores (0-3)"),
        (
            {"NEURON_RT_VISIBLE_CORES": "0-99999999"},
            "'0-99999999'", "outside the node, which has 4 cores (0-3)",
        ),
        ({"NEURON_RT_VISIBLE_CORES": "\u0663"}, "'\u0663'", "digits 0-9"),
        ({"NEURONCORE_GROUP_SIZES": "\u0662"}, "'\u0662'", "digits 0-9"),
        ({"NEURONCORE_GROUP_SIZES": "99999999x1"}, "'99999999x1'", "more than 1024 cores"),
        ({"NEURON_SIM_CORES": "\u0661\u0666"}, "'\u0661\u0666'", "digits 0-9"),
        ({"NEURON_SIM_CORES": "99999999"}, "'99999999'", "at most 1024"),
        ({"NEURON_SIM_MAX_STREAK": "\u0663"}, "'\u0663'", "digits 0-9"),
        ({"NEURON_SIM_CORES": "many"}, "'many'", "positive core count"),
        ({"NEURON_SIM_CORES": "0"}, "'0'", "positive core count"),
        ({"NEURON_SIM_INSTANCE_TYPE": "inf9.huge"}, "'inf9.huge'", "inf1.6xlarge"),
        (
            {"NEURON_SIM_CORES": "4", "NEURON_SIM_INSTANCE_TYPE": "inf1.6xlarge"},
            "'4'", "16 cores",
        ),
        ({"NEURON_SIM_CORE_MEMORY_MB": "lots"}, "'lots'", "MiB"),
        ({"NEURON_SIM_SCHEDULER": "lottery"}, "'lottery'", "switch-aware, fifo"),
        ({"NEURON_SIM_MAX_STREAK": "0"}, "'0'", "positive count"),
        ({"NEURON_RT_LOG_LEVEL": "loud"}, "'loud'", "debug, info, warning, error"),
    ],
    ids=[
        "sizes-empty-entry", "sizes-word", "visible-backwards", "visible-word",
        "visible-off-node", "visible-huge-range", "visible-arabic-indic",
        "sizes-arabic-indic", "sizes-huge", "cores-arabic-indic", "cores-huge",
        "streak-arabic-indic", "cores-word", "cores-zero", "unknown-type", "count-contradicts-type",
        "memory-word", "unknown-scheduler", "streak-zero", "log-level-word",
    ],
)  # fmt: skip
def test_bad_values_are_quoted_with_accepted_forms(
    env: dict[str, str], quoted: str, hint: str
) -> None:
    with pytest.raises(RuntimeConfigError) as info:
        config_from_env(env)
    assert quoted in str(info.value)
    assert hint in str(info.value)


@pytest.mark.parametrize(
    ("visible", "names_node_size"),
    [("0-99999999", True), ("4", True), ("\u0663", False), ("3-1", False)],
    ids=["huge-range", "one-past", "arabic-indic", "backwards"],
)
def test_only_off_node_errors_point_at_the_node_size(visible: str, names_node_size: bool) -> None:
    with pytest.raises(RuntimeConfigError) as info:
        config_from_env({"NEURON_RT_VISIBLE_CORES": visible})
    assert ("comes from NEURON_SIM_CORES" in str(info.value)) is names_node_size
