"""compat/bentoml_logging.py against the installed BentoML: the config dict we write our
formatter into is the one BentoML applies in its server processes, again after the service is
imported too. In a fresh process (logging is process-wide), as a BentoML worker runs: no server."""

from __future__ import annotations

import os
import subprocess
import sys

from bentoml._internal import log as bentoml_log

from settings import PROJECT_ROOT

PATCH = "compat/bentoml_logging.py"

# As a BentoML worker: BentoML applies its config, the service's import writes our formatter in,
# and BentoML applies its config again (as it does on --reload): our format stays.
WORKER = """
import logging
from bentoml._internal.log import configure_server_logging
from compat import bentoml_logging

class Marked(logging.Formatter):
    def format(self, record):
        return "MARKED " + record.name + " " + record.getMessage()

print("applied before:", bentoml_logging.server_logging_applied())
configure_server_logging()
print("applied after:", bentoml_logging.server_logging_applied())
bentoml_logging.use_formatter(Marked, ["compat"])
configure_server_logging()
logging.getLogger("bentoml.access").info("access line")
logging.getLogger("compat.probe").info("our line")
"""


def test_the_config_has_the_shape_we_write_into() -> None:
    config = bentoml_log.SERVER_LOGGING_CONFIG
    assert {"formatters", "handlers", "loggers", "root"} <= config.keys(), (
        f"{PATCH}: BentoML's SERVER_LOGGING_CONFIG is now {sorted(config)}"
    )
    assert config["handlers"] and all("formatter" in h for h in config["handlers"].values()), (
        f"{PATCH}: BentoML's server log handlers no longer name a formatter"
    )
    filters = [f.get("()") for f in config.get("filters", {}).values()]
    assert bentoml_log.TraceRecordFilter in filters, (
        f"{PATCH}: BentoML's server handler no longer has TraceRecordFilter, which tells that "
        "its logging is applied"
    )


def test_bentoml_applies_our_formatter_from_its_config() -> None:
    output = subprocess.run(
        [sys.executable, "-c", WORKER],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert output[:2] == ["applied before: False", "applied after: True"], (
        f"{PATCH}: server_logging_applied() no longer tells BentoML's logging: {output[:2]}"
    )
    assert output[2:] == ["MARKED bentoml.access access line", "MARKED compat.probe our line"], (
        f"{PATCH}: BentoML's configure_server_logging no longer applies the formatter written "
        f"into SERVER_LOGGING_CONFIG: {output[2:]}"
    )
