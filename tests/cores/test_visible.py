import pytest

from neuron_cores import (
    CoreListError,
    contiguous_runs,
    format_core_list,
    is_contiguous,
    parse_core_list,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", (3,)),
        ("4-7", (4, 5, 6, 7)),
        ("2,3,8", (2, 3, 8)),
        ("0-1,8,10-11", (0, 1, 8, 10, 11)),
        (" 5 - 6 ", (5, 6)),
        ("8,2", (8, 2)),
    ],
    ids=["one", "range", "comma", "mixture", "spaces", "order-kept"],
)
def test_parse_core_list(value: str, expected: tuple[int, ...]) -> None:
    assert parse_core_list(value) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty"),
        ("7-4", "runs backwards"),
        ("1,1", "more than once"),
        ("0-3,2", "more than once"),
        ("a", "not a non-negative integer"),
        ("-3", "not a non-negative integer"),
        ("1,,2", "empty entry"),
    ],
    ids=["empty", "backwards", "duplicate", "overlap", "word", "negative", "double-comma"],
)
def test_parse_core_list_errors(value: str, problem: str) -> None:
    with pytest.raises(CoreListError) as info:
        parse_core_list(value)
    assert problem in str(info.value)
    assert "NEURON_RT_VISIBLE_CORES" in str(info.value)
    assert "Accepted forms" in str(info.value)


@pytest.mark.parametrize(
    ("cores", "expected"),
    [((4, 5, 6, 7), "4-7"), ((3,), "3"), ((2, 3, 8), "2,3,8"), ((7, 5, 6), "5-7")],
    ids=["range", "single", "gap", "unsorted-contiguous"],
)
def test_format_core_list(cores: tuple[int, ...], expected: str) -> None:
    assert format_core_list(cores) == expected
    assert sorted(parse_core_list(expected)) == sorted(cores)


def test_contiguous_runs_and_is_contiguous() -> None:
    assert contiguous_runs([5, 0, 1, 2, 7, 6]) == [(0, 2), (5, 7)]
    assert is_contiguous([2, 3, 4])
    assert not is_contiguous([2, 4])
    assert not is_contiguous([])
    assert not is_contiguous([2, 2, 3])
