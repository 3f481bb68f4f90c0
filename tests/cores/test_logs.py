import json
import logging

import pytest

from neuron_cores.logs import JsonFormatter, configure_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(log_format="json", level="info")
    logging.getLogger("neuron.test").info("allocated %s", "4-7")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("neuron.test").exception("failed")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["message"] == "allocated 4-7"
    assert (first["level"], first["logger"]) == ("info", "neuron.test")
    assert first["time"].endswith("Z")
    assert "RuntimeError: boom" in second["exception"]


def test_text_format_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(log_format="text", level="WARNING")
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "WARNING x: shown" in err


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="'xml' is not one of text, json"):
        configure_logging(log_format="xml", level="INFO")


def test_a_second_call_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    configure_logging(log_format="text", level="INFO")
    configure_logging(log_format="json", level="INFO")
    ours = [h for h in root.handlers if type(h).__name__ == "_ProjectHandler"]
    assert foreign in root.handlers
    assert len(ours) == 1
    assert isinstance(ours[0].formatter, JsonFormatter)
