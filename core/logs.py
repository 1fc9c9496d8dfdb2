"""structlog set-up: JSON lines in production, readable colours in a terminal, secrets masked.

Log lines leave the pod (log shippers, support tickets), so credentials never reach them: every
string of every record, ours and the libraries' (faust, aiokafka, pymilvus), exception text
included, goes through ``simstream.redact`` (URL passwords, query strings and fragments).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from simstream.redact import redact

__all__ = ["mask_event", "configure_logging", "get_logger"]

_PLAIN = (int, float, bool, type(None))


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_mask(v) for v in value]
    # Anything else is rendered with repr (JSON) or str (console): mask that, keep the object when
    # there is nothing to hide (exc_info tuples are rendered later by format_exc_info, masked then).
    shown = repr(value)
    masked = redact(shown)
    return value if masked == shown else masked


def mask_event(logger: Any, method: str, event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """structlog processor: mask secrets in every value of the event (``_record`` and ``exc_info``
    are left for the formatter; their text is masked once rendered)."""
    for key, value in event_dict.items():
        if key not in ("_record", "_from_structlog", "exc_info"):
            event_dict[key] = _mask(value)
    return event_dict


class _NamedWriter(structlog.WriteLogger):
    """structlog's line writer (one lock per file, shared), with the name ``add_logger_name`` reads."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def configure_logging(log_format: str = "auto", level: str = "INFO") -> None:
    """One renderer for structlog's lines and stdlib's (faust, aiokafka, uvicorn) on stderr.

    Our own lines go straight from structlog to stderr (a filtering logger: a line below the level
    is a no-op; no stdlib record, handler lock or second formatting pass): serve writes an access
    line per request, and through stdlib logging that line was ~30 us, half of a cheap request's
    time on the event loop. The libraries' lines come through stdlib logging, masked the same way."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_event,  # last before rendering: every value, context and exception text included
            renderer,
        ],
        logger_factory=lambda *args: _NamedWriter(sys.stderr, str(args[0]) if args else ""),
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        cache_logger_on_first_use=True,
    )
    shared: list[structlog.typing.Processor] = [
        mask_event,  # first: no later processor (or sink added later) sees a secret
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            mask_event,  # again: exception text exists only from here, and context vars merged after the first pass
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "faust", "mode", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # milvus-lite's in-process gRPC server logs every unimplemented call (AllocTimestamp) as an error.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
