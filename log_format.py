"""Log lines of the served processes: one JSON object per line (or plain text), each carrying the
id of the request it was written for.

The Gateway's middleware sets `request_id_var` for the life of a request and the v2 worker for
the life of a job, so every line logged meanwhile, by our code, by BentoML (its access line) or
by a library, names the request. Every job carries its request id to the runner, and a runner's
`generate` names its batch's requests (`requests_of`) while it runs them. The Gateway's call to a
runner also carries the ids as OpenTelemetry baggage (`request_ids_sent`; BentoML's client
sends it in the `baggage` header and the runner's BentoML middleware takes it in), so the
runner's own lines about that call, its access line included, name them too. Shared by the
Gateway and the runners, like settings.py.

BentoML configures logging in each of its processes before it imports the service, from its
dict `SERVER_LOGGING_CONFIG`; `configure_logging`, called when the services are imported, puts
our formatter into that dict and re-applies it (compat/bentoml_logging.py), so BentoML's handlers
(stdout) keep their place and only the format changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.config
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from bentoml import server_context
from opentelemetry import baggage
from opentelemetry import context as otel_context

from compat import bentoml_logging

LogFormat = Literal["json", "text"]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "depthid_request_id", default=None
)
# The baggage entry a runner call carries its request ids in. Anyone can send a `baggage`
# header, so only ids of the shape ours have (request ids, comma-separated) are believed.
REQUEST_ID_BAGGAGE = "depthid.request_id"
_CARRIED_IDS = re.compile(r"[A-Za-z0-9._:-]{1,128}(,[A-Za-z0-9._:-]{1,128})*")


def current_request_id() -> str | None:
    """The request id(s) a line logged now is about: set in this process, or carried here by
    the call being handled (a runner's, from the Gateway)."""
    own = request_id_var.get()
    if own is not None:
        return own
    carried = baggage.get_baggage(REQUEST_ID_BAGGAGE)
    return carried if isinstance(carried, str) and _CARRIED_IDS.fullmatch(carried) else None


@contextlib.contextmanager
def request_ids_sent(ids: str) -> Iterator[None]:
    """Calls made meanwhile carry `ids` to the service they call (OpenTelemetry baggage)."""
    token = otel_context.attach(baggage.set_baggage(REQUEST_ID_BAGGAGE, ids))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def requests_of(jobs: Iterable[Any]) -> Iterator[None]:
    """Every line logged meanwhile names the request ids of `jobs` (a runner's batch: each id
    once, comma-separated, in order)."""
    token = request_id_var.set(joined_request_ids(jobs) or None)
    try:
        yield
    finally:
        request_id_var.reset(token)


def joined_request_ids(jobs: Iterable[Any]) -> str:
    """The jobs' request ids, each once, comma-separated, in order."""
    return ",".join(dict.fromkeys(job.request_id for job in jobs))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [request_id=%(request_id)s] %(message)s"
# Our own code logs at INFO (worker start, runner not ready, requeued jobs, connections cut off
# by compat/uvicorn_httptools.py); libraries keep BentoML's WARNING.
PROJECT_LOGGERS = ("gateway", "runners", "models", "compat")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, service."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": current_request_id(),
            # Which BentoML service wrote it (gateway, sd15_depth...): None outside BentoML.
            "service": server_context.service_name,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """BentoML-like text, with the request id."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = current_request_id() or "-"
        return super().format(record)


FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JsonFormatter, "text": TextFormatter}

# Library output a server's operator cannot act on, silenced in every served process: set here,
# when the services are imported, before any runner imports these libraries (in its own
# __init__), which read them once. An operator's own values win (setdefault).
QUIET_LIBRARIES_ENV = {
    # Progress bars (diffusers' "Loading pipeline components", transformers' "Loading weights",
    # each pipeline call's steps): carriage-return art that breaks the one-record-a-line logs.
    "TQDM_DISABLE": "1",
    # Notices about the libraries' own choices: torchvision fallbacks, `image_encoder is not
    # loaded` (InstantID uses embeddings), fp32-kept modules, experimental attention backends.
    # Their errors still show.
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}


def quiet_libraries() -> None:
    for name, value in QUIET_LIBRARIES_ENV.items():
        os.environ.setdefault(name, value)
    # diffusers' own loaders still pass `torch_dtype`, which it deprecates.
    warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated", category=FutureWarning)


def configure_logging(log_format: LogFormat) -> None:
    """Use `log_format` on BentoML's server logging: in its config dict (which it applies again
    in processes it starts later) and, in a process where it is already applied, right now.
    Elsewhere (tests, scripts) logging is left as it is."""
    config = bentoml_logging.use_formatter(FORMATTERS[log_format], PROJECT_LOGGERS)
    if bentoml_logging.server_logging_applied():
        quiet_libraries()
        logging.config.dictConfig(config)
        logging.captureWarnings(True)  # library warnings become log lines in the same format
