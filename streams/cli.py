"""The ``simstream`` command: worker, produce, reconcile, demo.

Expected failures print one red line and exit 1; options name their env vars.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from streams.logs import configure_logging, get_logger
from streams.settings import Settings, load_settings

log = get_logger("simstream")


def _settings() -> Settings:
    try:
        settings = load_settings()
    except Exception as exc:  # pydantic names the offending SIMSTREAM_* variable
        click.secho(f"configuration error: {exc}", fg="red", err=True)
        sys.exit(1)
    configure_logging(settings.log_format, settings.log_level)
    return settings


@click.group()
def main() -> None:
    """simstream: Kafka product events in, fresh top-K neighbour lists out."""


@main.command()
def worker() -> None:
    """Run the streaming worker against SIMSTREAM_KAFKA and SIMSTREAM_MILVUS_URI (production entry point)."""
    import faust

    from streams.runtime import build_worker

    settings = _settings()
    log.info("starting worker", settings=settings.safe_dump())
    w = build_worker(settings)

    class _Worker(faust.Worker):
        def _setup_logging(self) -> None:  # keep structlog's handlers; faust would replace them
            configure_logging(settings.log_format, settings.log_level)

    _Worker(w.app, loglevel=settings.log_level.lower(), redirect_stdouts=False, quiet=True).execute_from_commandline()


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", default=None, help="Target topic (default SIMSTREAM_EVENTS_TOPIC).")
def produce(path: Path, topic: str | None) -> None:
    """Publish product events from a JSON Lines or CSV file, keyed by product_id."""
    from streams.producer import EventProducer, read_events

    settings = _settings()
    with EventProducer(settings) as producer:
        n = producer.send_all(read_events(path), topic=topic)
    click.echo(f"published {n} events to {topic or settings.events_topic}")


@main.command()
def reconcile() -> None:
    """Recompute every neighbour list from the index; publish only differences (run while the stream is quiet)."""
    from streams.reconcile import reconcile_all

    settings = _settings()
    report = reconcile_all(settings)
    click.echo(f"checked {report['lists']} lists: {report['differed']} differed and were republished, "
               f"{report['tombstones']} tombstones")


@main.command()
@click.option("--keep", is_flag=True, help="Keep the data directory afterwards.")
@click.option("--timeout", default=600.0, show_default=True, help="Give up after this many seconds.")
def demo(keep: bool, timeout: float) -> None:
    """Run everything on this machine: broker, worker, milvus-lite, the sample catalog; print the lists."""
    from streams.demo import run_demo

    configure_logging("console", "WARNING")
    try:
        run_demo(keep=keep, timeout_s=timeout)
    except (TimeoutError, RuntimeError) as exc:
        click.secho(f"{type(exc).__name__}: {exc}", fg="red", err=True)
        sys.exit(1)


def _print_json(doc: Any) -> None:
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
