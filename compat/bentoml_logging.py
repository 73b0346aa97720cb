"""Patch: our log format in BentoML's server logging config.

BentoML configures logging in each of its processes from its dict `SERVER_LOGGING_CONFIG`
(`bentoml._internal.log`): a worker applies it (`configure_server_logging`) before it imports the
service, and applies it again where it reloads (`--reload`); the arbiter of `--development` is
handed the same dict. `use_formatter` writes our formatter into that dict, so that each of them
applies our format, and returns it for log_format.py to apply where BentoML already has.

What it relies on (bentoml==1.4.39): that dict's shape (`formatters`, `handlers` each naming its
`formatter`, `loggers`), and its handler's filter, `TraceRecordFilter`, which tells whether
BentoML's server logging is applied in this process.

Supported ways checked: BentoML's configuration has `logging.access` only (which fields its
access line has), not the format; its documented way to customise logging, the standard logging
API on its loggers' handlers, changes the handlers BentoML made but not the dict it applies
again, and dictConfig's `disable_existing_loggers: False` (which keeps our modules' loggers,
made before BentoML's config runs, enabled) has no handler-level equivalent. The service name of
each line is read through BentoML's public `bentoml.server_context` (log_format.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from bentoml._internal import log as bentoml_log

CHECKED_WITH = ("bentoml", "1.4.39")


def use_formatter(
    formatter: type[logging.Formatter], info_loggers: Iterable[str]
) -> dict[str, Any]:
    """Make `formatter` the format of every handler of BentoML's server logging config, and log
    `info_loggers` at INFO; return that config (a dictConfig dict)."""
    config = bentoml_log.SERVER_LOGGING_CONFIG
    config["formatters"]["depthid"] = {"()": formatter}
    for handler in config["handlers"].values():
        handler["formatter"] = "depthid"
    for name in info_loggers:
        config["loggers"][name] = {"level": logging.INFO}
    # Our modules were imported, their loggers made, before this runs: keep them enabled.
    config["disable_existing_loggers"] = False
    return config


def server_logging_applied() -> bool:
    """Whether this process's root logger has BentoML's server handler (its trace filter)."""
    return any(
        isinstance(log_filter, bentoml_log.TraceRecordFilter)
        for handler in logging.getLogger().handlers
        for log_filter in handler.filters
    )
