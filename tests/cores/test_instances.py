import pytest

from neuron_cores import INSTANCE_TYPES, UnknownInstanceTypeError, lookup_instance_type


@pytest.mark.parametrize(
    ("name", "devices", "cores"),
    [
        ("inf1.xlarge", 1, 4),
        ("inf1.6xlarge", 4, 16),
        ("inf1.24xlarge", 16, 64),
        ("inf2.48xlarge", 12, 24),
        ("trn1.32xlarge", 16, 32),
        ("trn2.48xlarge", 16, 64),
    ],
    ids=str,
)
def test_instance_table_matches_facts(name: str, devices: int, cores: int) -> None:
    it = lookup_instance_type(name)
    assert (it.devices, it.cores) == (devices, cores)


def test_device_of_core() -> None:
    it = INSTANCE_TYPES["inf1.6xlarge"]
    assert [it.device_of(c) for c in (0, 3, 4, 15)] == [0, 0, 1, 3]
    with pytest.raises(ValueError, match="outside"):
        it.device_of(16)
    assert it.family == "inf1"


def test_unknown_instance_type_lists_known() -> None:
    with pytest.raises(UnknownInstanceTypeError) as info:
        lookup_instance_type("inf9.huge")
    assert "'inf9.huge'" in str(info.value)
    assert "inf1.6xlarge" in str(info.value)
