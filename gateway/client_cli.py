"""``govgate propose|approvals|halt|resume|decisions``: the gateway's clients on the command line.

These commands call a running gateway over gRPC with mutual TLS, as a decision
engine (``propose``) or an overseer (``approvals``, ``halt``, ``resume``,
``decisions``) would. The caller's identity is its client certificate, never an
option: ``--identity NAME`` only picks the files ``DATA/certs/NAME.pem`` and
``NAME.key`` (with ``DATA/certs/ca.pem``), and ``--ca``, ``--cert`` and ``--key``
name other files. Calls are synchronous, each with a deadline (``--timeout``);
the streams that follow a decision (``propose --wait``, ``decisions watch``) run
until it is final or until Ctrl-C.

Results go to standard output: one JSON line per decision, or, for ``approvals
list``, a table when standard output is a terminal and JSON lines otherwise.
What a person needs to read goes to standard error. A refused or failed call is
one line on standard error (status code, message, field violations, reason) and
exit status 1, never a traceback. No command prints key material.

Example::

    govgate propose resize libvirt/web-1 --param vcpus=4 --confidence 0.9 --identity engine-1
    govgate approvals list --identity alice
    govgate approvals approve d-0123abcd... --reason "capacity plan" --identity alice
"""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from cryptography.exceptions import UnsupportedAlgorithm
from rich.console import Console
from rich.markup import escape

from gateway._cli import DataOpt, err, lazy_module, print_json

if TYPE_CHECKING:
    import grpc
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    from rich.table import Table

    from gateway._proto.govgate.v1 import (
        decision_pb2,
        decision_pb2_grpc,
        oversight_pb2,
        oversight_pb2_grpc,
        types_pb2,
    )
else:  # loaded when a command first uses them: other commands start without gRPC
    grpc = lazy_module("grpc")
    x509 = lazy_module("cryptography.x509")
    serialization = lazy_module("cryptography.hazmat.primitives.serialization")
    error_details_pb2 = lazy_module("google.rpc.error_details_pb2")
    rpc_status = lazy_module("grpc_status.rpc_status")
    decision_pb2 = lazy_module("gateway._proto.govgate.v1.decision_pb2")
    decision_pb2_grpc = lazy_module("gateway._proto.govgate.v1.decision_pb2_grpc")
    oversight_pb2 = lazy_module("gateway._proto.govgate.v1.oversight_pb2")
    oversight_pb2_grpc = lazy_module("gateway._proto.govgate.v1.oversight_pb2_grpc")
    types_pb2 = lazy_module("gateway._proto.govgate.v1.types_pb2")

__all__ = ["DEFAULT_SERVER", "decision_json", "register"]

DEFAULT_SERVER = "localhost:7443"
_TOP = 5  # contributions shown per decision
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # what `govgate certs init` issues
_COLOURS = {
    "EXECUTED": "green",
    "PENDING_APPROVAL": "yellow",
    "EXECUTING": "yellow",
    "DRY_RUN": "cyan",
}

approvals_app = typer.Typer(help="Review the decisions that wait for people.", no_args_is_help=True)
decisions_app = typer.Typer(help="Read and follow decisions.", no_args_is_help=True)

# -- connection options (every command takes them) ------------------------------------

_CONN = "Connection"
ServerOpt = Annotated[
    str,
    typer.Option(
        "--server",
        envvar="GOVGATE_SERVER",
        metavar="HOST:PORT",
        rich_help_panel=_CONN,
        help="The gateway's address.",
    ),
]
IdentityOpt = Annotated[
    str | None,
    typer.Option(
        "--identity",
        envvar="GOVGATE_IDENTITY",
        metavar="NAME",
        rich_help_panel=_CONN,
        show_default=False,
        help="Call as NAME: DATA/certs/NAME.pem and NAME.key.",
    ),
]
CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        rich_help_panel=_CONN,
        show_default=False,
        help="CA certificate that issued the server's (default: DATA/certs/ca.pem).",
    ),
]
CertOpt = Annotated[
    Path | None,
    typer.Option(
        "--cert",
        rich_help_panel=_CONN,
        show_default=False,
        help="Client certificate (default: DATA/certs/NAME.pem).",
    ),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--key",
        rich_help_panel=_CONN,
        show_default=False,
        help="Client private key (default: DATA/certs/NAME.key).",
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        min=0.1,
        max=86_400.0,
        rich_help_panel=_CONN,
        help="Seconds to wait for each call (at most a day: gRPC cannot keep a longer deadline).",
    ),
]


@dataclass(frozen=True)
class Conn:
    """Where to connect and with which certificate files, as the options gave them."""

    data: Path
    server: str
    identity: str | None
    ca: Path | None
    cert: Path | None
    key: Path | None
    timeout: float

    def files(self) -> tuple[Path, Path, Path]:
        """CA, certificate and key paths: explicit ones win over ``DATA/certs/NAME.*``."""
        certs = self.data / "certs"
        if self.identity is not None and not _NAME.fullmatch(self.identity):
            raise typer.BadParameter(
                f"{self.identity!r} is not an identity name (lowercase letters, digits, . _ -)",
                param_hint="--identity",
            )
        name = self.identity
        if name is None and (self.cert is None or self.key is None):
            raise typer.BadParameter(
                "say who calls: --identity NAME (or $GOVGATE_IDENTITY), or --cert and --key",
                param_hint="--identity",
            )
        ca = self.ca or certs / "ca.pem"
        cert = self.cert or certs / f"{name}.pem"
        key = self.key or certs / f"{name}.key"
        return ca, cert, key

    def credentials(self) -> grpc.ChannelCredentials:
        """The client's TLS credentials, after checking that each file holds what it should
        (gRPC would only log a bad file and then fail to connect)."""
        ca, cert, key = self.files()
        self._check_present(ca, cert, key)
        try:
            pems = ca.read_bytes(), cert.read_bytes(), key.read_bytes()
        except OSError as e:
            _fail(f"cannot read {escape(str(e.filename))}: {e.strerror or e}")
        ca_pem, cert_pem, key_pem = pems
        for path, pem in ((ca, ca_pem), (cert, cert_pem)):
            if not _parses(x509.load_pem_x509_certificates, pem):
                _fail(f"{escape(str(path))} is not a PEM certificate")
        if not _parses(lambda b: serialization.load_pem_private_key(b, password=None), key_pem):
            _fail(f"{escape(str(key))} is not an unencrypted PEM private key")
        return grpc.ssl_channel_credentials(ca_pem, key_pem, cert_pem)

    def _check_present(self, ca: Path, cert: Path, key: Path) -> None:
        """Fail with what to do when a file is missing: an option's file, the local CA, or
        the identity's certificate."""
        given = {"--ca": self.ca, "--cert": self.cert, "--key": self.key}
        for option, path in given.items():
            if path is not None and not path.is_file():
                _fail(f"{escape(str(path))} ({option}) does not exist")
        missing = ", ".join(escape(str(p)) for p in (ca, cert, key) if not p.is_file())
        if not missing:
            return
        certs = self.data / "certs"
        if self.identity is None:  # --cert and --key were given and exist: the CA is missing
            _fail(f"no CA certificate at {escape(str(ca))}; pass --ca FILE")
        if not (certs / "ca.pem").is_file():
            _fail(
                f"no certificates in {escape(str(certs))} (missing {missing}); create a local "
                f"CA and certificates with `govgate certs init --data {escape(str(self.data))} "
                f"--identity {self.identity}`"
            )
        names = sorted(p.stem for p in certs.glob("*.pem") if p.stem not in ("ca", "server"))
        _fail(
            f"no certificate for identity {self.identity!r} (missing {missing}); identities in "
            f"{escape(str(certs))}: {', '.join(names) or 'none'}. Issue it from that CA with "
            f"`govgate certs init --data {escape(str(self.data))} --identity {self.identity}`"
        )


def _parses(load: Callable[[bytes], object], pem: bytes) -> bool:
    try:
        load(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: an encrypted key
        return False
    return True


def _fail(message: str) -> NoReturn:
    """Print one error line (rich markup) and leave with status 1."""
    err.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(1)


class Client:
    """The stubs over one channel, and the deadline every unary call gets."""

    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self.timeout = timeout
        self.decisions = decision_pb2_grpc.DecisionServiceStub(channel)
        self.oversight = oversight_pb2_grpc.OversightServiceStub(channel)

    def get(self, decision_id: str) -> Any:
        req = decision_pb2.GetDecisionRequest(decision_id=decision_id)
        return self.decisions.GetDecision(req, timeout=self.timeout)

    def pending(self) -> list[Any]:
        """Every pending decision, oldest first, page by page."""
        out: list[Any] = []
        token = ""
        while True:
            req = oversight_pb2.ListPendingRequest(page_token=token)
            reply = self.oversight.ListPending(req, timeout=self.timeout)
            out += reply.decisions
            token = reply.next_page_token
            if not token:
                return out

    def watch(self, decision_id: str) -> Iterator[Any]:
        """The decision now, then each change until it is final (no deadline)."""
        req = decision_pb2.WatchDecisionRequest(decision_id=decision_id)
        yield from self.decisions.WatchDecision(req)


@contextmanager
def _session(conn: Conn) -> Iterator[Client]:
    """A channel to the gateway; any failed call in the block becomes one error line, exit 1."""
    credentials = conn.credentials()
    try:
        with grpc.secure_channel(conn.server, credentials) as channel:
            yield Client(channel, conn.timeout)
    except grpc.RpcError as e:
        _fail(escape(_rpc_error(e, conn)))


def _rpc_error(e: grpc.RpcError, conn: Conn) -> str:
    """One line: status code, message, field violations, and the ``ErrorInfo`` reason."""
    code: grpc.StatusCode = e.code()
    message = e.details() or ""
    violations: list[Any] = []
    reason = decision = ""
    try:
        status = rpc_status.from_call(e)
    except ValueError:  # trailers that contradict the status: keep code and message
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += bad.field_violations
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, decision = info.reason, info.metadata.get("decision_id", "")
    if not reason:  # not an answer from govgate: the transport failed
        if code == grpc.StatusCode.UNAVAILABLE:
            tls = "handshake" in message.lower() or "socket closed" in message.lower()
            hint = " (TLS: were the CA and your certificate issued for this gateway?)"
            return f"cannot reach the gateway at {conn.server}: {message}{hint if tls else ''}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer from the gateway at {conn.server} within {conn.timeout:g} s"
    if len(violations) == 1 and violations[0].description == message:
        parts = [f"{code.name}: {violations[0].field}: {message}"]
    else:
        parts = [f"{code.name}: {message}", *(f"{v.field}: {v.description}" for v in violations)]
    if reason and reason != code.name:
        parts.append(f"reason {reason}")
    if decision:
        parts.append(f"decision {decision}")
    return "; ".join(parts)


# -- what a decision looks like ---------------------------------------------------------


def _state(d: Any) -> str:
    try:
        return str(types_pb2.DecisionState.Name(d.state))
    except ValueError:  # a state newer than these stubs
        return str(d.state)


def _target(d: Any) -> str:
    return f"{d.action.target.runtime}/{d.action.target.resource}"


def decision_json(d: Any) -> dict[str, Any]:
    """A ``Decision`` as the JSON line these commands print (``risk`` is null if unscored)."""
    outcome = None
    if d.HasField("outcome"):
        outcome = {
            "status": d.outcome.status,
            "detail": d.outcome.detail,
            "ledger_index": d.outcome.ledger_index,
        }
    return {
        "decision_id": d.decision_id,
        "request_id": d.request_id,
        "state": _state(d),
        "verb": d.action.verb,
        "target": _target(d),
        "parameters": dict(d.action.parameters),
        "requester": d.requester,
        "risk": d.risk if d.model_id else None,
        "model_id": d.model_id,
        "policy_id": d.policy_id,
        "fallback": d.fallback,
        "reasons": list(d.reasons),
        "approvals_required": d.approvals_required,
        "reviews": [
            {
                "reviewer": r.reviewer,
                "approved": r.approved,
                "reason": r.reason,
                "ledger_index": r.ledger_index,
            }
            for r in d.reviews
        ],
        "ledger_index": d.ledger_index,
        "leaf_hash": d.leaf_hash.hex(),
        "request_digest": d.request_digest.hex(),
        "contributions": [c.text for c in d.contributions[:_TOP]],
        "outcome": outcome,
        "created": d.created.ToJsonString() if d.HasField("created") else None,
        "approval_deadline": (
            d.approval_deadline.ToJsonString() if d.HasField("approval_deadline") else None
        ),
    }


def _risk(d: Any) -> str:
    return f"risk {d.risk:.3f}" if d.model_id else "not scored"


def _summary(d: Any) -> str:
    """One line for people: state, action, risk, why, and where it is recorded."""
    state = _state(d)
    colour = _COLOURS.get(state, "red")
    why = "; ".join(d.reasons)
    waits = ""
    if state == "PENDING_APPROVAL":
        waits = f", {sum(r.approved for r in d.reviews)} of {d.approvals_required} approvals"
    return (
        f"[{colour}]{state}[/{colour}] {escape(d.action.verb)} {escape(_target(d))} "
        f"({_risk(d)}{waits}, decision {d.decision_id}, ledger {d.ledger_index})"
        f"{': ' + escape(why) if why else ''}"
    )


def _show(d: Any) -> None:
    print_json(decision_json(d))
    err.print(_summary(d), soft_wrap=True)


def _age(d: Any, now: dt.datetime) -> str:
    if not d.HasField("created"):
        return "?"
    seconds = int((now - d.created.ToDatetime(tzinfo=dt.UTC)).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _table(pending: Sequence[Any], recent: Sequence[Any] = (), title: str = "") -> Table:
    """Pending decisions (and, for ``watch``, the ones that just left the list)."""
    from rich.table import Column, Table

    now = dt.datetime.now(dt.UTC)
    table = Table(
        Column("decision", no_wrap=True),  # whole: reviewers copy it
        "age",
        "action",
        "risk",
        "approvals",
        "requester",
        "reasons",
        title=title or None,
        caption=None if pending else "no pending decisions",
    )
    for d in [*pending, *recent]:
        params = " ".join(f"{k}={v}" for k, v in sorted(d.action.parameters.items()))
        state = _state(d)
        approvals = f"{sum(r.approved for r in d.reviews)}/{d.approvals_required}"
        if state != "PENDING_APPROVAL":
            colour = _COLOURS.get(state, "red")
            approvals = f"[{colour}]{state}[/{colour}]"
        table.add_row(
            d.decision_id,
            _age(d, now),
            escape(f"{d.action.verb} {_target(d)} {params}".strip()),
            f"{d.risk:.3f}" if d.model_id else "-",
            approvals,
            escape(d.requester.removeprefix("spiffe://")),
            escape("; ".join(d.reasons)),
        )
    return table


# -- propose ---------------------------------------------------------------------------


def _split_target(text: str) -> types_pb2.Target:
    runtime, sep, resource = text.partition("/")
    if not sep or not runtime or not resource:
        raise typer.BadParameter(
            "must be RUNTIME/RESOURCE, e.g. libvirt/web-1", param_hint="RUNTIME/RESOURCE"
        )
    return types_pb2.Target(runtime=runtime, resource=resource)


def _split_params(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        if key.strip() in out:
            raise typer.BadParameter(f"{key.strip()!r} is given twice", param_hint="--param")
        out[key.strip()] = value
    return out


def propose(
    verb: Annotated[
        str, typer.Argument(metavar="VERB", help="What to do: start, shutdown, resize, ...")
    ],
    target: Annotated[
        str,
        typer.Argument(metavar="RUNTIME/RESOURCE", help="What to do it to, e.g. libvirt/web-1."),
    ],
    data: DataOpt,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", metavar="KEY=VALUE", help="A parameter of the verb (repeatable)."),
    ] = None,
    justification: Annotated[str, typer.Option(help="Why, in words (recorded).")] = "",
    confidence: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="The engine's confidence, 0..1.")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="The engine's name (who you are comes from the certificate).")
    ] = "",
    request_id: Annotated[
        str | None,
        typer.Option(
            help="Idempotency key (default: a fresh UUID). The same id returns the first decision.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide and record; never execute.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Follow the decision until it is final, one JSON line per change."
        ),
    ] = False,
    server: ServerOpt = DEFAULT_SERVER,
    identity: IdentityOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Propose one action to the gateway and print its decision (JSON).

    The gateway scores it, applies its policy, records the decision and, when the
    policy allows, executes it. With --wait, also print each later change of state
    (approvals, execution) until the decision is final.
    """
    action = types_pb2.Action(
        verb=verb,
        target=_split_target(target),
        parameters=_split_params(param or []),
        justification=justification,
        confidence=confidence or 0.0,  # 0 on the wire: not given
        engine=engine,
    )
    rid = request_id if request_id is not None else str(uuid.uuid4())
    conn = Conn(data, server, identity, ca, cert, key, timeout)
    with _session(conn) as gw:
        req = decision_pb2.ProposeRequest(request_id=rid, action=action, dry_run=dry_run)
        d = gw.decisions.Propose(req, timeout=timeout)
        _show(d)
        if not wait or _state(d) not in ("PENDING_APPROVAL", "EXECUTING"):
            return
        last = d.state
        err.print(f"waiting for decision {d.decision_id} (Ctrl-C stops waiting, not the decision)")
        try:
            for change in gw.watch(d.decision_id):
                if change.state != last:
                    _show(change)
                    last = change.state
        except KeyboardInterrupt:
            err.print(f"stopped waiting; decision {d.decision_id} goes on")
            raise typer.Exit(130) from None


# -- approvals -------------------------------------------------------------------------


def _digest_arg(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        raise typer.BadParameter("must be hexadecimal", param_hint="--digest") from None
    if len(digest) != 32:
        raise typer.BadParameter("must be 64 hex digits (SHA-256)", param_hint="--digest")
    return digest


def _show_for_review(d: Any, doing: str) -> None:
    """What the reviewer is about to approve or deny, on standard error."""
    a = d.action
    params = " ".join(f"{k}={v}" for k, v in sorted(a.parameters.items()))
    lines = [
        f"[bold]{doing} {d.decision_id}[/bold]: {escape(a.verb)} {escape(_target(d))} "
        f"{escape(params)}".rstrip(),
        f"  requested by {escape(d.requester)}"
        + (f" (engine {escape(a.engine)})" if a.engine else "")
        + (f", confidence {a.confidence:.2f}" if a.confidence else ""),
    ]
    if a.justification:
        lines.append(f"  justification: {escape(a.justification)}")
    lines.append(
        f"  {_risk(d)}; state {_state(d)}; "
        f"{sum(r.approved for r in d.reviews)} of {d.approvals_required} approvals"
    )
    lines += [f"  reason: {escape(r)}" for r in d.reasons]
    lines += [f"  {escape(c.text)}" for c in d.contributions[:3]]
    lines.append(f"  request digest {d.request_digest.hex()}")
    for line in lines:
        err.print(line, soft_wrap=True)


def _review(decision_id: str, reason: str, digest: str | None, approve: bool, conn: Conn) -> None:
    pinned = _digest_arg(digest)
    with _session(conn) as gw:
        doing = "approving" if approve else "denying"
        if pinned is None:
            d = gw.get(decision_id)
            _show_for_review(d, doing)
            pinned = d.request_digest
        else:
            err.print(f"{doing} {decision_id} with the pinned request digest {pinned.hex()}")
        req = oversight_pb2.ReviewRequest(
            decision_id=decision_id, reason=reason, request_digest=pinned
        )
        call = gw.oversight.Approve if approve else gw.oversight.Deny
        _show(call(req, timeout=conn.timeout))


DecisionArg = Annotated[str, typer.Argument(metavar="DECISION_ID", help="The decision (d-...).")]
DigestOpt = Annotated[
    str | None,
    typer.Option(
        "--digest",
        metavar="HEX",
        show_default=False,
        help="Review this request digest, as seen earlier, instead of fetching it.",
    ),
]


@approvals_app.command("list")
def approvals_list(
    data: DataOpt,
    as_json: Annotated[
        bool | None,
        typer.Option(
            "--json/--table",
            show_default=False,
            help="JSON lines or a table (default: a table on a terminal, JSON lines otherwise).",
        ),
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
    identity: IdentityOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """List the decisions that wait for approval."""
    with _session(Conn(data, server, identity, ca, cert, key, timeout)) as gw:
        pending = gw.pending()
    if as_json is None:
        as_json = not sys.stdout.isatty()
    if as_json:
        for d in pending:
            print_json(decision_json(d))
    else:
        Console().print(_table(pending))
    err.print(f"{len(pending)} pending")


@approvals_app.command("approve")
def approvals_approve(
    decision_id: DecisionArg,
    data: DataOpt,
    reason: Annotated[str, typer.Option(help="Why (recorded; the policy may require it).")] = "",
    digest: DigestOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    identity: IdentityOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Approve a pending decision; enough approvals execute it.

    Shows what is approved (action, risk, reasons) on standard error, then approves
    exactly that request: the review names its digest.
    """
    _review(decision_id, reason, digest, True, Conn(data, server, identity, ca, cert, key, timeout))


@approvals_app.command("deny")
def approvals_deny(
    decision_id: DecisionArg,
    data: DataOpt,
    reason: Annotated[str, typer.Option(help="Why (required, recorded).")],
    digest: DigestOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    identity: IdentityOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Deny a pending decision (a reason is required)."""
    if not reason.strip():
        raise typer.BadParameter("a denial needs a reason", param_hint="--reason")
    _review(
        decision_id, reason, digest, False, Conn(data, server, identity, ca, cert, key, timeout)
    )


# -- halt and resume -------------------------------------------------------------------

AllOpt = Annotated[bool, typer.Option("--all", help="Everything.")]
RuntimeOpt = Annotated[
    str | None, typer.Option("--runtime", metavar="NAME", help="One runtime: libvirt, kata.")
]
SelectorOpt = Annotated[
    str | None,
    typer.Option("--selector", metavar="K=V[,K=V]", help="Targets whose labels match."),
]


def _scope(everything: bool, runtime: str | None, selector: str | None) -> types_pb2.Scope:
    chosen = [everything, runtime is not None, selector is not None]
    if sum(chosen) != 1:
        raise typer.BadParameter("choose one of --all, --runtime NAME, --selector K=V")
    if everything:
        return types_pb2.Scope(all=True)
    if runtime is not None:
        return types_pb2.Scope(runtime=runtime)
    return types_pb2.Scope(selector=selector)


def _scope_json(scope: types_pb2.Scope) -> dict[str, Any]:
    which = scope.WhichOneof("scope")
    return {which: getattr(scope, which)}


def _describe_scope(scope: types_pb2.Scope) -> str:
    which = scope.WhichOneof("scope")
    if which == "all":
        return "everything"
    return f"{which} {escape(getattr(scope, which))}"


def halt(
    data: DataOpt,
    reason: Annotated[str, typer.Option(help="Why (required, recorded).")],
    everything: AllOpt = False,
    runtime: RuntimeOpt = None,
    selector: SelectorOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    identity: IdentityOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Turn the stop switch on for a scope: proposals there become HALTED until resumed."""
    _switch(True, reason, _scope(everything, runtime, selector),
            Conn(data, server, identity, ca, cert, key, timeout))  # fmt: skip


def resume(
    data: DataOpt,
    reason: Annotated[str, typer.Option(help="Why (required, recorded).")],
    everything: AllOpt = False,
    runtime: RuntimeOpt = None,
    selector: SelectorOpt = None,
    server: ServerOpt = DEFAULT_SERVER,
    identity: IdentityOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Turn the stop switch off for a scope halted before (name the scope as the halt did)."""
    _switch(False, reason, _scope(everything, runtime, selector),
            Conn(data, server, identity, ca, cert, key, timeout))  # fmt: skip


def _switch(on: bool, reason: str, scope: types_pb2.Scope, conn: Conn) -> None:
    """Halt (``on``) or resume ``scope``, and say so."""
    what = "halt" if on else "resume"
    if not reason.strip():
        raise typer.BadParameter(f"a {what} needs a reason", param_hint="--reason")
    with _session(conn) as gw:
        if on:
            reply = gw.oversight.Halt(oversight_pb2.HaltRequest(scope=scope, reason=reason),
                                      timeout=conn.timeout)  # fmt: skip
        else:
            reply = gw.oversight.Resume(oversight_pb2.ResumeRequest(scope=scope, reason=reason),
                                        timeout=conn.timeout)  # fmt: skip
    out: dict[str, Any] = {"scope": _scope_json(scope), "ledger_index": reply.ledger_index}
    if on and reply.halt_id:
        out["halt_id"] = reply.halt_id
    print_json(out)
    done = "[red]halted[/red]" if on else "[green]resumed[/green]"
    err.print(f"{done} {_describe_scope(scope)} (ledger {reply.ledger_index})")


# -- decisions -------------------------------------------------------------------------


@decisions_app.command("get")
def decisions_get(
    decision_id: DecisionArg,
    data: DataOpt,
    server: ServerOpt = DEFAULT_SERVER,
    identity: IdentityOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Print one decision (JSON)."""
    with _session(Conn(data, server, identity, ca, cert, key, timeout)) as gw:
        _show(gw.get(decision_id))


@decisions_app.command("watch")
def decisions_watch(
    data: DataOpt,
    once: Annotated[bool, typer.Option("--once", help="Print the table once and exit.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 1.0,
    server: ServerOpt = DEFAULT_SERVER,
    identity: IdentityOpt = None,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """A live table of pending decisions, and of the last ones to leave it, until Ctrl-C.

    Polls the pending list; a decision that leaves it is fetched once to show how it
    ended (executed, denied, expired ...).
    """
    from rich.live import Live

    out = Console()
    with _session(Conn(data, server, identity, ca, cert, key, timeout)) as gw:
        if once:
            out.print(_table(gw.pending(), title=f"pending at {server}"))
            return
        shown: dict[str, Any] = {}
        recent: list[Any] = []
        try:
            with Live(console=out, auto_refresh=False) as live:
                while True:
                    pending = gw.pending()
                    now = {d.decision_id: d for d in pending}
                    for gone in shown.keys() - now.keys():
                        recent.insert(0, gw.get(gone))
                    shown, recent = now, recent[:10]
                    stamp = time.strftime("%H:%M:%S")  # local time, for people
                    live.update(
                        _table(pending, recent, f"pending at {server}, {stamp}"), refresh=True
                    )
                    time.sleep(interval)
        except KeyboardInterrupt:
            return


def register(app: typer.Typer) -> None:
    """Add ``propose``, ``halt``, ``resume``, ``approvals`` and ``decisions`` to ``app``."""
    app.command("propose")(propose)
    app.command("halt")(halt)
    app.command("resume")(resume)
    app.add_typer(approvals_app, name="approvals")
    app.add_typer(decisions_app, name="decisions")
