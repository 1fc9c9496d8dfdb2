"""``simstream demo``: the whole path on one machine, with nothing to install by hand.

Starts the Tansu broker and a worker (milvus-lite file in a temporary data dir), publishes the
bundled sample catalog, prints the neighbour lists a recommender would read, then deletes one
product and shows the lists that changed. Stops every process it started.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

import click
import orjson

from simstream.records import NeighbourList
from simstream.harness.embedded import EmbeddedBroker, WorkerProcess
from simstream.streams.neighbour_reader import NeighbourReader
from simstream.streams.producer import EventProducer
from simstream.settings import Settings, load_settings

__all__ = ["sample_catalog", "print_lists", "run_demo", "serve_demo"]


def sample_catalog() -> tuple[list[dict[str, object]], Path]:
    # the real folder: the strict editable install links each file from a tree of its own, and
    # image paths must resolve under the image root
    root = Path(str(resources.files("simstream.harness.sample") / "catalog.jsonl")).resolve().parent
    docs = [orjson.loads(line) for line in (root / "catalog.jsonl").read_bytes().splitlines() if line.strip()]
    return docs, root / "images"


def print_lists(lists: dict[str, NeighbourList | None], titles: dict[str, str], ids: list[str], top: int = 3) -> None:
    for pid in ids:
        nl = lists.get(pid)
        click.secho(f"\n{titles.get(pid, pid)}  [{pid}]", bold=True)
        if nl is None:
            click.echo("   (deleted: tombstone)")
            continue
        for n in nl.neighbours[:top]:
            parts = ", ".join(f"{f} {v:+.2f}" for f, v in sorted(n.fields.items(), key=lambda kv: -abs(kv[1]))[:4])
            click.echo(f"   {n.score:.3f}  {titles.get(n.product_id, n.product_id)[:60]:<60}  ({parts})")


def run_demo(*, keep: bool = False, timeout_s: float = 600.0, serve: bool = False, serve_port: int | None = None) -> None:
    docs, image_root = sample_catalog()
    titles = {str(d["product_id"]): str(d["title"]) for d in docs}
    data_dir = Path(tempfile.mkdtemp(prefix="simstream-demo-"))
    started = time.monotonic()
    click.echo("starting the embedded Kafka-protocol broker (Tansu) ...")
    with EmbeddedBroker() as broker:
        env = {
            "SIMSTREAM_KAFKA": broker.url, "SIMSTREAM_DATA_DIR": str(data_dir),
            "SIMSTREAM_IMAGE_ROOT": str(image_root), "SIMSTREAM_SESSION_TIMEOUT_S": "6",
            "SIMSTREAM_TOPIC_PARTITIONS": "2", "SIMSTREAM_LOG_FORMAT": "json", "SIMSTREAM_TOP_K": "5",
        }
        # The worker uses the shipped fusion config (Settings.fusion_config, v3) unless SIMSTREAM_FUSION_CONFIG says otherwise.
        settings = Settings(kafka=broker.url, topic_partitions=2)
        click.echo(f"starting the worker (milvus-lite file in {data_dir}) ...")
        worker = WorkerProcess(env, log_path=data_dir / "worker.log").start()
        try:
            worker.wait_ready(timeout_s=min(timeout_s, 240))
            now = int(time.time() * 1000)
            with EventProducer(settings) as producer:
                for d in docs:
                    producer.send({**d, "version": now, "event_time": now})
            click.echo(f"published {len(docs)} product events; waiting for neighbour lists ...")
            with NeighbourReader(settings) as reader:
                lists = reader.wait_until(lambda got: all(got.get(t) is not None for t in titles),
                                          timeout_s=timeout_s, quiet_s=3, check=worker.check)
                click.secho(f"\nNeighbour lists (top 3 of {len(next(iter(lists.values())).neighbours)}; "  # type: ignore[union-attr]
                            "score = weighted sum of per-field cosines):", fg="green")
                print_lists(lists, titles, list(titles))

                gone = "hp-bose-qc45"
                before = {k: v for k, v in lists.items()}
                with EventProducer(settings) as producer:
                    producer.send({"product_id": gone, "op": "delete", "version": now + 1,
                                   "event_time": int(time.time() * 1000)})
                lists = reader.wait_until(lambda got: got.get(gone, "x") is None, timeout_s=120, quiet_s=3, check=worker.check)
                changed = [k for k in titles if lists.get(k) != before.get(k)]
                click.secho(f"\nDeleted {titles[gone]!r}: {len(changed)} lists changed "
                            "(its tombstone and every list that held it):", fg="green")
                print_lists(lists, titles, changed)
            click.secho(f"\ndemo finished in {time.monotonic() - started:.0f} s", fg="green")
        except Exception:
            click.echo(f"\nworker log tail ({worker.log_path}):\n{worker.tail()}", err=True)
            raise
        finally:
            worker.stop()
    try:
        if serve:
            serve_demo(data_dir, image_root, serve_port)
    finally:
        if keep:
            click.echo(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def serve_demo(data_dir: Path, image_root: Path, port: int | None) -> None:
    """``simstream demo --serve``: the query API and explorer on the demo's milvus-lite file (the
    worker has stopped and released it: a lite file opens in one process only), until Ctrl-C."""
    from simstream.serve.server import run_server

    settings = load_settings(data_dir=data_dir, image_root=image_root, top_k=5)
    port = port or settings.serve_port
    click.secho(f"\nexplorer: http://{settings.serve_host}:{port}/   API docs: http://{settings.serve_host}:{port}/docs"
                "   (Ctrl-C stops)", fg="green")
    run_server(settings, settings.serve_host, port)
