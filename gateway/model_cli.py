"""``govgate model ...``: train, list, activate, verify, show cards, explain one action.

Models live in the registry under ``<data dir>/models`` (see
:mod:`explain.registry`); the bundled default model is listed with them and
is active until another is activated. Activating a model is recorded in the
ledger first (a ``model`` record), so the command needs the log's signing key:
if the record cannot be written, the model is not activated.

``explain`` is imported inside each command: importing XGBoost takes about a
second, which the ledger commands should not pay.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from adapters.errors import InvalidActionError
from gateway._cli import DataOpt, err, print_json, progress
from ledger import DataDir, Draft, LedgerConfig
from ledger.store import RecordQuery

if TYPE_CHECKING:
    from explain.registry import Registry

__all__ = ["model_app"]

model_app = typer.Typer(
    help="Train, inspect, activate and explain with the risk model.", no_args_is_help=True
)
RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--models", help="Model registry directory (default: DATA/models).", show_default=False
    ),
]


def _registry(data: Path, models: Path | None) -> Registry:
    from explain.registry import Registry

    return Registry(models if models is not None else data / "models")


# -- train -------------------------------------------------------------------------


def _ledger_records(data: Path) -> list[dict[str, Any]]:
    """Every decision, outcome and incident record, in the form ``ledger query`` prints."""
    import asyncio

    async def go() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with DataDir(data).store() as store:
            for kind in ("decision", "outcome", "incident"):
                after = None
                while True:
                    page = await store.query(RecordQuery(kind=kind, limit=10_000), after=after)
                    out.extend(r.to_json() for r in page)
                    if len(page) < 10_000:
                        break
                    after = page[-1].index
        return out

    if not DataDir(data).db_path.exists():
        raise typer.BadParameter(f"no ledger in {data}", param_hint="--from-ledger")
    return asyncio.run(go())


@model_app.command("train")
def train_cmd(
    data: DataOpt,
    models: RegistryOpt = None,
    history: Annotated[
        Path | None, typer.Option(help="Train on a history file (JSON lines with labels).")
    ] = None,
    from_ledger: Annotated[
        bool, typer.Option("--from-ledger", help="Train on the ledger's decisions + incidents.")
    ] = False,
    horizon_days: Annotated[
        float,
        typer.Option(
            min=0,
            help="--from-ledger: quiet executed decisions older than "
            "this many days count as harmless.",
        ),
    ] = 7.0,
    samples: Annotated[
        int, typer.Option(min=100, max=2_000_000, help="Bootstrap examples to generate.")
    ] = 60_000,
    seed: Annotated[int, typer.Option(help="Seed for the bootstrap set and the split.")] = 1,
    max_depth: Annotated[int, typer.Option(min=1, max=12, help="Tree depth.")] = 3,
    trees: Annotated[int, typer.Option(min=1, max=5000, help="Boosting rounds.")] = 150,
    learning_rate: Annotated[float, typer.Option(min=0.001, max=1.0, help="Shrinkage.")] = 0.1,
    holdout: Annotated[float, typer.Option(min=0.05, max=0.5, help="Held-out share.")] = 0.2,
    activate: Annotated[
        bool, typer.Option("--activate", help="Activate the new model (recorded in the ledger).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the model card as JSON.")] = False,
) -> None:
    """Train a model, evaluate it on held-out data, and add it (with its card) to the registry.

    Without --history or --from-ledger it trains on the documented bootstrap set.
    """
    from explain.bootstrap import generate, to_matrix
    from explain.history import label_ledger, read_history
    from explain.train import DataSource, TrainParams, data_digest, train

    if history is not None and from_ledger:
        raise typer.BadParameter("choose one of --history and --from-ledger")
    params = TrainParams(
        max_depth=max_depth,
        n_estimators=trees,
        learning_rate=learning_rate,
        holdout=holdout,
        seed=seed,
    )
    if history is not None:
        examples = read_history(history)
        source = DataSource("history", f"{history.name} sha256 "
                            f"{_sha256_file(history)}")  # fmt: skip
    elif from_ledger:
        examples, stats = label_ledger(
            _ledger_records(data), horizon=dt.timedelta(days=horizon_days)
        )
        err.print(
            f"ledger: {stats.decisions} decisions; labelled {stats.harmful} harmful, "
            f"{stats.cleared} cleared, {stats.quiet} quiet; {stats.unlabelled} unlabelled, "
            f"{stats.skipped} unusable"
        )
        source = DataSource("ledger", str(data), {"horizon_days": horizon_days, **stats.__dict__})
    else:
        bar, report = progress("generating bootstrap set", "examples")
        with bar:
            examples = generate(samples, seed=seed, progress=report)
        source = DataSource("bootstrap", f"explain.bootstrap seed={seed} n={samples}")
    x, y = to_matrix(examples)
    err.print(
        f"training on {len(y)} examples ({int(y.sum())} harmful), data sha256 "
        f"{data_digest(x, y)[:16]}..."
    )
    bar, report = progress("boosting", "trees")
    with bar:
        trained = train(x, y, params, source, progress=report)
    registry = _registry(data, models)
    model_id = registry.add(trained.raw, trained.card)
    m = trained.metrics
    err.print(
        f"model {model_id} added to {registry.root}\n"
        f"held-out ({m['holdout_rows']} rows): ROC-AUC {m['roc_auc']:.4f}, "
        f"PR-AUC {m['pr_auc']:.4f}, Brier {m['brier']:.4f}"
    )
    if activate:
        _activate(data, registry, model_id, reason="trained with --activate", actor="")
    if as_json:
        print_json(trained.card)
    else:
        typer.echo(model_id)


def _sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- list, card, verify, activate ------------------------------------------------------


@model_app.command("list")
def list_cmd(
    data: DataOpt,
    models: RegistryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List registered and bundled models; the active one is marked."""
    registry = _registry(data, models)
    rows = []
    for e in registry.entries():
        try:
            card = registry.card(e.id)
        except Exception as ex:
            card = {"error": str(ex)}
        rows.append((e, card))
    if as_json:
        for e, card in rows:
            m = card.get("metrics", {})
            print_json(
                {
                    "model_id": e.id,
                    "active": e.active,
                    "bundled": e.bundled,
                    "created": card.get("created"),
                    "schema_version": card.get("schema_version"),
                    "source": card.get("data", {}).get("source"),
                    "roc_auc": m.get("roc_auc"),
                    "path": str(e.path),
                }
            )
        return
    table = Table("", "model id", "created", "source", "schema", "ROC-AUC", "")
    for e, card in rows:
        auc = card.get("metrics", {}).get("roc_auc")
        table.add_row(
            "*" if e.active else "",
            e.id[:16],
            str(card.get("created", "?")),
            str(card.get("data", {}).get("source", card.get("error", "?"))),
            str(card.get("schema_version", "?")),
            f"{auc:.4f}" if isinstance(auc, float) else "?",
            "bundled" if e.bundled else "",
        )
    Console().print(table)


@model_app.command("card")
def card_cmd(
    data: DataOpt,
    model: Annotated[
        str | None, typer.Argument(help="Model id or prefix (default: active).")
    ] = None,
    models: RegistryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The JSON card.")] = False,
) -> None:
    """Print a model card (Markdown, or JSON with --json)."""
    from explain.card import render_markdown

    card = _registry(data, models).card(model)
    if as_json:
        print_json(card)
    else:
        typer.echo(render_markdown(card))


@model_app.command("verify")
def verify_cmd(
    data: DataOpt,
    model: Annotated[str | None, typer.Argument(help="Model id or prefix (default: all).")] = None,
    models: RegistryOpt = None,
) -> None:
    """Check that model files hash to their ids, load, match this schema and have cards."""
    from explain.errors import ExplainError

    registry = _registry(data, models)
    ids = [registry.resolve(model).id] if model else [e.id for e in registry.entries()]
    bad = 0
    for mid in ids:
        try:
            registry.verify(mid)
            err.print(f"[green]ok[/green]     {mid}")
        except ExplainError as ex:
            bad += 1
            err.print(f"[red]FAILED[/red] {mid}: {escape(str(ex))}", soft_wrap=True)
    if not ids:
        err.print("no models registered")
    if not model:  # all of them: the one a gateway would load too
        try:
            active = registry.active_id()
            if active not in ids:
                registry.verify(active)
            err.print(f"active {active}")
        except ExplainError as ex:
            bad += 1
            err.print(f"[red]FAILED[/red] the active model: {escape(str(ex))}", soft_wrap=True)
    raise typer.Exit(1 if bad else 0)


def _activate(data: Path, registry: Registry, ref: str, *, reason: str, actor: str) -> None:
    import asyncio

    try:
        previous: str | None = registry.active_id()
    except Exception:
        previous = None
    model = registry.verify(ref)
    card = registry.card(model.id)
    body = {
        "event": "activate",
        "model_id": model.id,
        "previous_model_id": previous or "",
        "schema_version": model.schema,
        "card_sha256": _sha256_file(registry.resolve(model.id).card_path),
        "data_sha256": card.get("data", {}).get("sha256", ""),
        "roc_auc": str(card.get("metrics", {}).get("roc_auc", "")),
        "reason": reason,
    }

    async def record() -> int:
        d = DataDir(data)
        config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)
        async with d.open_ledger(config) as log:
            rec = await log.append(Draft("model", body, actor=actor, target=f"model/{model.id}"))
            return rec.index

    index = asyncio.run(record())  # the record first: no unrecorded activation
    registry.activate(model.id)
    err.print(f"activated {model.id} (ledger record {index})")


@model_app.command("activate")
def activate_cmd(
    model: Annotated[str, typer.Argument(help="Model id or unique prefix.")],
    data: DataOpt,
    models: RegistryOpt = None,
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "",
    actor: Annotated[str, typer.Option(help="Who (recorded in the ledger).")] = "",
) -> None:
    """Verify a model, record the activation in the ledger, then make it active."""
    _activate(data, _registry(data, models), model, reason=reason, actor=actor)


# -- explain -----------------------------------------------------------------------


def _read_action_file(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as ex:
        raise InvalidActionError(f"cannot read {path}: {ex.strerror or ex}") from ex
    try:
        return json.loads(raw)
    except ValueError as ex:
        raise InvalidActionError(f"{path} is not JSON: {ex}") from ex


@model_app.command("explain")
def explain_cmd(
    action: Annotated[Path, typer.Option("--action", help="Action file (JSON).")],
    data: DataOpt,
    models: RegistryOpt = None,
    model: Annotated[str | None, typer.Option(help="Model id or prefix (default: active).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    top: Annotated[int, typer.Option(min=1, max=50, help="Contributions to show.")] = 5,
    chart: Annotated[
        Path | None, typer.Option(help="Also draw the waterfall chart here (.png or .svg).")
    ] = None,
) -> None:
    """Score one action (JSON with "action", "state" and optional "time") and explain it.

    Exit status 2 with a one-line error when the action file is invalid.
    """
    from explain.charts import FORMATS, waterfall
    from explain.features import Context, featurize
    from explain.history import read_proposal
    from explain.scorer import Scorer

    if chart is not None and chart.suffix.lower() not in FORMATS:
        raise typer.BadParameter(f"must end in {' or '.join(FORMATS)}", param_hint="--chart")
    try:
        act, state, when = read_proposal(_read_action_file(action), action.name)
    except InvalidActionError as ex:
        err.print(f"[red]invalid action file:[/red] {escape(str(ex))}", soft_wrap=True)
        raise typer.Exit(2) from None
    m = _registry(data, models).load(model)
    x = featurize(act, state, Context(now=when or dt.datetime.now(dt.UTC)))
    exp = Scorer(m).score(x[None, :]).explanation(0)
    if chart is not None:
        waterfall(exp, chart)
        err.print(f"waterfall chart written to {chart}")
    if as_json:
        out = exp.to_json(top=top)
        out["action"] = act.to_json()
        print_json(out)
        return
    con = Console()
    con.print(
        f"[bold]{act.verb} {act.target}[/bold]: risk [bold]{exp.risk:.3f}[/bold] "
        f"(base {exp.base_value:+.3f} log-odds, margin {exp.margin:+.3f})"
    )
    con.print(f"model {m.id[:16]}, schema {exp.schema_version}")
    for c in exp.top(top):
        con.print(f"  {c.text()}")
