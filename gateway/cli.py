"""The ``govgate`` command line.

Sub-commands::

    govgate keys generate|public|rotate     the log's signing key
    govgate ledger append|query|checkpoint|proof|consistency|export|verify|hmac
    govgate model train|list|activate|verify|card|explain   the risk model
    govgate certs init                       a local CA and mTLS certificates
    govgate db migrate                       the PostgreSQL ledger schema
    govgate serve                           the gateway (gRPC with mTLS)
    govgate propose | approvals list|approve|deny | halt | resume | decisions get|watch
                                            clients of a running gateway
    govgate report                          compliance evidence (EU AI Act, NIST AI RMF)
    govgate demo                            the embedded-defaults walkthrough

Machine-readable results go to standard output (JSON, or JSON lines for
streams); progress and messages go to standard error. Errors exit with status
1 and one line that says what to do; ``ledger verify`` exits 0 only when
everything verifies. No command prints a private key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from adapters.errors import AdapterError
from compliance.cli import report_command
from explain.errors import ExplainError
from gateway._cli import DataOpt, UrlOpt, err, print_json, progress
from gateway.client_cli import register as register_client_commands
from gateway.model_cli import model_app
from ledger import DataDir, Draft, LedgerConfig, LedgerError, NoteVerifier, VerificationError
from ledger._b64 import b64encode
from ledger.datadir import DEFAULT_ORIGIN
from ledger.export import export_ledger
from ledger.record import hmac_value, time_bound
from ledger.store import RecordQuery
from ledger.verify import verify_export

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="govgate",
    help="Governance and audit gateway for virtualization.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="The ledger's Ed25519 signing key.", no_args_is_help=True)
ledger_app = typer.Typer(
    help="Append to, query, prove and verify the ledger.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")
app.add_typer(model_app, name="model")
certs_app = typer.Typer(help="Certificates for mTLS (a local CA for demos and tests).",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(certs_app, name="certs")
db_app = typer.Typer(help="The PostgreSQL ledger database (many replicas).", no_args_is_help=True)
app.add_typer(db_app, name="db")
register_client_commands(app)  # propose, approvals, halt, resume, decisions: gRPC clients
app.command("report")(report_command)  # compliance evidence from the ledger

# For commands that open the ledger for one job: no background checkpoints, and
# nothing signed on the way out beyond what the command itself asks for.
_ONE_JOB = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, checkpoint_on_close=False)


def _parse_json(text: str) -> Any:
    """Parse caller JSON exactly: integers stay integers, however large
    (orjson would turn ones beyond 64 bits into floats); the ledger then
    refuses what RFC 8785 cannot represent. NaN, Infinity and numbers too
    large for a double are not JSON values at all and are refused here."""

    def finite(s: str) -> float:
        f = float(s)
        if not math.isfinite(f):
            raise ValueError(f"number {s} is out of range")
        return f

    def constant(s: str) -> Any:
        raise ValueError(f"{s} is not a JSON value")

    return json.loads(text, parse_float=finite, parse_constant=constant)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# -- keys ------------------------------------------------------------------------


@keys_app.command("generate")
def keys_generate(
    data: DataOpt,
    name: Annotated[
        str, typer.Option("--name", help="Log name (the checkpoint origin).")
    ] = DEFAULT_ORIGIN,
) -> None:
    """Create the log's signing key (mode 0600) and print its verifier key."""
    signer = DataDir(data).generate_key(name)
    err.print(f"created signing key {signer.key_id} in {DataDir(data).key_path} (mode 0600)")
    typer.echo(signer.verifier_key)


@keys_app.command("public")
def keys_public(data: DataOpt) -> None:
    """Print the active verifier key string (name+hash+key), the auditor's trust anchor."""
    typer.echo(DataDir(data).signer().verifier_key)


@keys_app.command("rotate")
def keys_rotate(
    data: DataOpt,
    reason: Annotated[str, typer.Option(help="Why the key is rotated (recorded).")] = "rotation",
) -> None:
    """Replace the signing key: a `key` record signed by the old key names the new one."""

    async def go() -> tuple[str, int]:
        d = DataDir(data)
        async with d.open_ledger(_ONE_JOB) as log:
            new = await d.rotate(log, reason)
            head, _ = await log.store.snapshot()  # the key record is the last one
            return new.verifier_key, head.size - 1

    vkey, index = _run(go())
    err.print(f"rotated; key record at index {index}; the old key is in keys/retired/")
    typer.echo(vkey)


# -- ledger ------------------------------------------------------------------------


@ledger_app.command("append")
def ledger_append(
    data: DataOpt,
    kind: Annotated[str, typer.Option(help="Record kind, e.g. decision, halt, incident.")],
    body: Annotated[str, typer.Option(help="Record body as a JSON object.")],
    trace_id: Annotated[str, typer.Option(help="W3C trace id (32 hex digits).")] = "",
    actor: Annotated[str, typer.Option(help="Who caused the record.")] = "",
    target: Annotated[str, typer.Option(help="What it is about, e.g. libvirt/vm-1.")] = "",
    decision_id: Annotated[str, typer.Option(help="The decision it belongs to.")] = "",
    sensitive: Annotated[
        list[str] | None,
        typer.Option(help="Dotted body path to store as a salted HMAC (repeatable)."),
    ] = None,
    url: UrlOpt = None,
) -> None:
    """Append one record and print it (JSON) once it is durable."""
    try:
        parsed = _parse_json(body)
    except ValueError as e:
        raise typer.BadParameter(f"--body is not JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise typer.BadParameter("--body must be a JSON object")
    draft = Draft(
        kind,
        parsed,
        trace_id=trace_id,
        actor=actor,
        target=target,
        decision_id=decision_id,
        sensitive=tuple(sensitive or ()),
    )

    async def go() -> dict[str, Any]:
        async with DataDir(data, url).open_ledger(LedgerConfig(checkpoint_interval=0)) as log:
            return (await log.append(draft)).to_json()

    print_json(_run(go()))


def _time_arg(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    try:
        return time_bound(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=option) from e


@ledger_app.command("query")
def ledger_query(
    data: DataOpt,
    start: Annotated[int, typer.Option("--from-index", min=0, help="First index.")] = 0,
    end: Annotated[int | None, typer.Option("--to-index", min=0, help="End index (excl.).")] = None,
    since: Annotated[str | None, typer.Option(help="RFC 3339 time, inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="RFC 3339 time, exclusive.")] = None,
    kind: Annotated[str | None, typer.Option(help="Record kind.")] = None,
    actor: Annotated[str | None, typer.Option(help="Actor.")] = None,
    target: Annotated[str | None, typer.Option(help="Target.")] = None,
    decision_id: Annotated[str | None, typer.Option(help="Decision id.")] = None,
    trace_id: Annotated[str | None, typer.Option(help="W3C trace id.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Stop after this many records.")] = 1000,
    page_size: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per read.")] = 1000,
    url: UrlOpt = None,
) -> None:
    """Print matching records as JSON lines, oldest first (needs no key)."""
    if end is not None and end < start:
        raise typer.BadParameter("must not be below --from-index", param_hint="--to-index")
    q = RecordQuery(
        start=start,
        end=end,
        since=_time_arg(since, "--since"),
        until=_time_arg(until, "--until"),
        kind=kind,
        actor=actor,
        target=target,
        decision_id=decision_id,
        trace_id=trace_id,
        limit=min(page_size, limit),
    )

    async def go() -> None:
        printed, after = 0, None
        async with DataDir(data, url).store() as store:
            while printed < limit:
                page = await store.query(q, after=after)
                for rec in page[: limit - printed]:
                    print_json(rec.to_json())
                    printed += 1
                if len(page) < q.limit:
                    break
                after = page[-1].index

    if not DataDir(data, url).has_ledger():
        raise LedgerError(f"no ledger in {data}")
    _run(go())


@ledger_app.command("checkpoint")
def ledger_checkpoint(
    data: DataOpt,
    size: Annotated[
        int | None, typer.Option(min=1, help="Print the one stored for size N.")
    ] = None,
    url: UrlOpt = None,
) -> None:
    """Print the signed checkpoint note for the current size (signing one if needed)."""

    async def go() -> str:
        async with DataDir(data, url).open_ledger(_ONE_JOB) as log:
            return (await log.checkpoint(size)).note

    sys.stdout.write(_run(go()))


@ledger_app.command("proof")
def ledger_proof(
    data: DataOpt,
    index: Annotated[int, typer.Option(min=0, help="Record index.")],
    size: Annotated[
        int | None, typer.Option(min=1, help="Tree size (default: checkpoint).")
    ] = None,
    url: UrlOpt = None,
) -> None:
    """Print an RFC 9162 inclusion proof as JSON."""

    async def go() -> dict[str, Any]:
        async with DataDir(data, url).open_ledger(_ONE_JOB) as log:
            p = await log.inclusion_proof(index, size)
        return {
            "index": p.index,
            "tree_size": p.tree_size,
            "leaf": b64encode(p.leaf),
            "leaf_hash": b64encode(p.leaf_hash),
            "proof": [b64encode(h) for h in p.proof],
        }

    print_json(_run(go()))


@ledger_app.command("consistency")
def ledger_consistency(
    data: DataOpt,
    old: Annotated[int, typer.Option(min=0, help="Older tree size.")],
    size: Annotated[
        int | None, typer.Option(min=1, help="Newer size (default: checkpoint).")
    ] = None,
    url: UrlOpt = None,
) -> None:
    """Print an RFC 9162 consistency proof as JSON."""

    async def go() -> dict[str, Any]:
        async with DataDir(data, url).open_ledger(_ONE_JOB) as log:
            p = await log.consistency_proof(old, size)
        return {
            "old_size": p.old_size,
            "tree_size": p.tree_size,
            "proof": [b64encode(h) for h in p.proof],
        }

    print_json(_run(go()))


@ledger_app.command("export")
def ledger_export(
    data: DataOpt,
    out: Annotated[Path, typer.Option(help="Export file (JSON lines).")],
    url: UrlOpt = None,
) -> None:
    """Write every record and checkpoint to FILE, ending with a fresh signed checkpoint."""
    if not out.parent.is_dir():
        raise typer.BadParameter(f"directory {out.parent} does not exist", param_hint="--out")
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a directory; name the export file", param_hint="--out")
    if DataDir(data, url).owns(out):
        raise typer.BadParameter(
            f"{out} is one of the data directory's own files (the ledger, its keys or salt); "
            "export somewhere else",
            param_hint="--out",
        )

    async def go() -> None:
        bar, update = progress("exporting")
        with bar:
            async with DataDir(data, url).open_ledger(_ONE_JOB) as log:
                summary = await export_ledger(log, out, progress=update)
        err.print(f"exported {summary.size} records and {summary.checkpoints} checkpoints to {out}")

    _run(go())


@ledger_app.command("verify")
def ledger_verify(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="Export written by `govgate ledger export`.")
    ],
    key: Annotated[str, typer.Option(help="Trusted verifier key (name+hash+key).")],
    signatures: Annotated[
        bool, typer.Option(help="Check every record signature (off: chain, roots, checkpoints).")
    ] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="Signature threads.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Re-verify an export with only the public key. Exit 0 only when all holds."""
    try:
        trusted = NoteVerifier.from_key_string(key)
    except LedgerError as e:
        raise typer.BadParameter(str(e), param_hint="--key") from e
    if not file.is_file():
        raise typer.BadParameter(f"{file} is not a file", param_hint="FILE")
    bar, update = progress("verifying")
    if quiet:
        result = verify_export(file, trusted, signatures=signatures, threads=threads)
    else:
        with bar:
            result = verify_export(
                file, trusted, signatures=signatures, threads=threads, progress=update
            )
    mode = (
        "signatures, chain, Merkle roots and checkpoints"
        if signatures
        else ("chain, Merkle roots and checkpoints (record signatures not checked)")
    )
    err.print(
        f"[green]OK[/green] {result.size} records, {result.checkpoints} checkpoints; "
        f"checked {mode}; keys {', '.join(result.key_ids)}"
    )
    sys.stdout.write(result.last_checkpoint)


@ledger_app.command("hmac")
def ledger_hmac(
    data: DataOpt,
    value: Annotated[str, typer.Argument(help="Candidate value as JSON, e.g. '\"s3cret\"'.")],
) -> None:
    """Print the salted HMAC a sensitive field holding VALUE would have been stored as."""
    try:
        parsed = _parse_json(value)
    except ValueError as e:
        raise typer.BadParameter(f"VALUE is not JSON: {e}") from e
    typer.echo(hmac_value(DataDir(data).salt(create=False), parsed))


@db_app.command("migrate")
def db_migrate(
    url: Annotated[
        str,
        typer.Option(
            "--ledger-url",
            envvar="GOVGATE_LEDGER_URL",
            help="The postgresql:// database to create or upgrade.",
        ),
    ],
) -> None:
    """Create or upgrade the ledger schema (versioned; refuses a newer schema)."""
    from ledger.postgres import SCHEMA_VERSION, migrate, redact

    def said(version: int, description: str) -> None:
        err.print(f"applying migration {version}: {description}")

    applied = _run(migrate(url, progress=said))
    where = redact(url)
    if applied:
        err.print(f"{where} is now at schema version {SCHEMA_VERSION}")
    else:
        err.print(f"{where} is already at schema version {SCHEMA_VERSION}; nothing to do")


@certs_app.command("init")
def certs_init(
    data: DataOpt,
    identity: Annotated[
        list[str], typer.Option("--identity", help="A client identity to issue (repeatable).")
    ],
    out: Annotated[
        Path | None, typer.Option("--dir", help="Where to write (default: DATA/certs).")
    ] = None,
) -> None:
    """Create a CA, a server certificate for localhost and one client certificate per identity.

    Where the directory already holds a CA, only the named identities are issued, by that
    CA. Private keys are written 0600; existing files are never overwritten. Each client's
    identity is its URI SAN, spiffe://govgate.local/NAME.
    """
    from gateway.identity import IdentityError, identity_of, init_certs

    target = out if out is not None else data / "certs"
    try:
        paths = init_certs(target, identity)
    except IdentityError as e:
        raise typer.BadParameter(str(e)) from None
    for name, p in paths.items():
        who = "" if name == "ca" else f"  identity {identity_of(p.cert.read_bytes())}"
        err.print(f"{name:<10} {p.cert}  (key {p.key}, mode 0600){who}", soft_wrap=True)


@app.command("serve")
def serve(
    data: DataOpt,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="GOVGATE_CONFIG",
            help="Configuration file (TOML; default: embedded defaults).",
        ),
    ] = None,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on (default 127.0.0.1:7443).")
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="Policy file (TOML).")] = None,
    roles: Annotated[Path | None, typer.Option(help="Roles file (TOML).")] = None,
    shadow: Annotated[
        bool | None,
        typer.Option(
            "--shadow/--enforce",
            help="Shadow mode: decide and record every proposal, never execute.",
        ),
    ] = None,
    libvirt_uri: Annotated[
        str | None,
        typer.Option(
            "--libvirt-uri",
            help='libvirt connection URI ("samples": the test driver with sample VMs).',
        ),
    ] = None,
    reflection: Annotated[
        bool | None,
        typer.Option("--reflection/--no-reflection", help="gRPC server reflection (default on)."),
    ] = None,
    grace: Annotated[
        float | None,
        typer.Option(
            min=0, max=86_400, help="Seconds in-flight calls get on SIGTERM (default 10)."
        ),
    ] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option(help="HOST:PORT for a Prometheus scrape endpoint (/metrics); default none."),
    ] = None,
    log_format: Annotated[
        str, typer.Option(help="text (for people) or json (one object a line, for pipelines).")
    ] = "text",
    port_file: Annotated[
        Path | None,
        typer.Option(help="Write the bound port here once listening (for --listen :0)."),
    ] = None,
    ledger_url: Annotated[
        str | None,
        typer.Option(
            "--ledger-url",
            envvar="GOVGATE_LEDGER_URL",
            show_default=False,
            help="A postgresql:// ledger shared by replicas (default DATA/ledger.db).",
        ),
    ] = None,
    replica: Annotated[
        str | None,
        typer.Option(
            help="This replica's stable name: needed with --ledger-url; on the SQLite ledger, "
            "gateways on one host share it as replicas."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            show_default=False,
            help="Gateway processes on the one address, each a replica (default 1; "
            "docs/serve.md, Workers).",
        ),
    ] = None,
    reuse_port: Annotated[
        bool | None, typer.Option("--reuse-port", hidden=True, help="Share the address.")
    ] = None,
    supervised: Annotated[
        bool, typer.Option("--supervised", hidden=True, help="Stop when stdin closes.")
    ] = False,
) -> None:
    """Run the gateway: the gRPC API with mTLS over the configured runtimes (docs/serve.md).

    Needs a signing key (govgate keys generate) and certificates (govgate certs init) in
    the data directory. Stops cleanly on SIGTERM or Ctrl-C.
    """
    # From here on a stop request is caught, not fatal: start-up, once it runs, takes it
    # as if it came then (it finishes what it writes, and stops before listening).
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: early.append(signum))
    from adapters.libvirt import LibvirtConfig
    from gateway.config import ConfigError, ServeConfig
    from gateway.logs import configure, event, flush
    from gateway.policy import PolicyError
    from gateway.roles import RolesError
    from gateway.serve import serve as run

    def ready(port: int) -> None:
        if port_file is not None:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(f"{port}\n")
            tmp.replace(port_file)

    try:
        cfg = ServeConfig.load(config, data=data)
        lv = None
        if libvirt_uri is not None:
            lv = LibvirtConfig(**{**(cfg.libvirt or LibvirtConfig()).__dict__, "uri": libvirt_uri})
        cfg = cfg.with_flags(
            listen=listen, policy=policy and policy.resolve(), roles=roles and roles.resolve(),
            shadow=shadow, libvirt=lv, reflection=reflection, grace=grace,
            metrics_listen=metrics_listen, ledger_url=ledger_url, replica=replica,
            workers=workers, reuse_port=reuse_port,
        )  # fmt: skip
        if log_format not in ("text", "json"):
            raise ConfigError(f"--log-format: {log_format!r} is not text or json")
        configure(log_format, tag=cfg.replica if cfg.workers == 1 else "")
        if cfg.workers > 1:
            from gateway.workers import Supervisor, worker_names

            if early:  # asked to stop before any worker started
                raise SystemExit(0)

            host, _, port = cfg.listen.rpartition(":")
            names = worker_names(cfg.replica, cfg.workers)
            # The workers get these arguments, from "serve" on, with their own added.
            supervisor = Supervisor(sys.argv[1:], names, host, int(port),
                                    say=lambda line: event(line), ready=ready)  # fmt: skip
            code = supervisor.run()
            flush()
            raise SystemExit(code)
        if supervised:
            _stop_when_stdin_closes()
        asyncio.run(run(cfg, say=lambda line: event(line), ready=ready, early_signals=early))
    except (ConfigError, PolicyError, RolesError) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        raise SystemExit(1) from None
    # Stopped: calls drained (or cut at --grace), the ledger closed, exporters flushed. A
    # runtime call still blocked in an adapter's worker thread (a hung libvirtd) must not
    # hold the exit past the grace: the interpreter would wait for that thread. Nothing
    # is lost by not waiting (the next start reconciles what the call left).
    flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


def _stop_when_stdin_closes() -> None:
    """A worker's tie to its supervisor (gateway.workers): standard input is a pipe from
    it, and its end (the supervisor has exited, or was killed) stops this gateway as
    SIGTERM does, draining first."""

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


@app.command("demo")
def demo(
    data: Annotated[Path, typer.Option(help="Demo data directory.")] = Path("demo-data"),
    records: Annotated[int, typer.Option(min=1, max=1_000_000, help="Sample decisions.")] = 2000,
    writers: Annotated[int, typer.Option(min=1, max=1024, help="Concurrent writers.")] = 32,
    pace: Annotated[
        float, typer.Option(min=0, max=5, help="Seconds between the engine's proposals.")
    ] = 0.3,
) -> None:
    """Walk through the ledger on embedded defaults: key, appends, proof, export, verify."""
    # Imported here: the demo scores with XGBoost, whose import (about a second) the
    # ledger and key commands, and the verifier's worker processes, should not pay.
    from gateway.demo import run_demo

    raise typer.Exit(run_demo(data, records, writers, Console(), pace))


def main() -> None:
    """Console entry point: domain errors become one line on stderr and exit 1."""
    try:
        app()
    except VerificationError as e:
        err.print(f"[red]FAILED[/red] {e}")
        raise SystemExit(1) from None
    except (LedgerError, ExplainError, AdapterError) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        raise SystemExit(1) from None
    except OSError as e:  # a file the user named cannot be read or written
        err.print(f"[red]error:[/red] {e}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
