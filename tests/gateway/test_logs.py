"""The gateway's log: lines written by a thread of their own, none lost, none forged."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import pytest

from gateway import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    saved = (logs.LOG.handlers[:], logs.LOG.level, logs.LOG.propagate, logging.root.handlers[:],
             logging.root.level)  # fmt: skip
    yield
    logs._stop_writer()
    logs.LOG.handlers[:], logs.LOG.level, logs.LOG.propagate = saved[0], saved[1], saved[2]
    logging.root.handlers[:], logging.root.level = saved[3], saved[4]


def lines(capfd: pytest.CaptureFixture[str]) -> list[str]:
    logs._stop_writer()  # writes what is queued, as at exit
    return capfd.readouterr().err.splitlines()


def test_json_lines_carry_the_fields_made_safe(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("json")
    logs.event("decision", decision_id="d-1", state="EXECUTED", risk=0.25, note="a\nb\x1b[31m")
    logging.getLogger("grpc").warning("a %s from a library", "warning")
    [ours, theirs] = [json.loads(line) for line in lines(capfd)]
    assert ours["event"] == "decision"
    assert ours["decision_id"] == "d-1"
    assert ours["risk"] == 0.25
    assert ours["note"] == "a?b?[31m"  # no line break, no terminal escape
    assert (theirs["logger"], theirs["event"]) == ("grpc", "a warning from a library")
    assert logs.current_format() == "json"


def test_text_lines_quote_values_that_could_forge_fields(
    capfd: pytest.CaptureFixture[str],
) -> None:
    logs.configure("text")
    logs.event("decision", state="FAILED", target='libvirt/ghost state=EXECUTED risk=0.0 "x"',
               requester="spiffe://govgate.local/engine-1", note="")  # fmt: skip
    [line] = lines(capfd)
    assert line == (
        'decision state=FAILED target="libvirt/ghost state=EXECUTED risk=0.0 \\"x\\"" '
        'requester=spiffe://govgate.local/engine-1 note=""'
    )


def test_a_record_is_fixed_when_logged_not_when_written(
    capfd: pytest.CaptureFixture[str],
) -> None:
    logs.configure("text")
    items = ["before"]
    logging.getLogger("govgate").warning("items: %s", items)
    items[0] = "after"  # changed before the writer thread formats the line
    assert lines(capfd) == ["items: ['before']"]


def test_no_line_is_lost_while_the_format_changes(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("text")
    rounds, burst = 30, 200
    go = [threading.Event() for _ in range(rounds)]

    def write() -> None:
        for r in range(rounds):
            go[r].wait(10)
            for k in range(burst):
                logs.event("tick", n=r * burst + k)

    writer = threading.Thread(target=write)
    writer.start()
    for r in range(rounds):
        go[r].set()  # a burst is being logged while the format changes under it
        logs.configure("json" if r % 2 else "text")
    writer.join()
    got = lines(capfd)
    numbers = sorted(
        int(json.loads(line)["n"]) if line.startswith("{") else int(line.split("n=")[1])
        for line in got
    )
    assert numbers == list(range(rounds * burst))  # every line, once


def test_a_new_format_applies_to_lines_not_yet_written(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("text")
    logs.configure("json")  # one writer thread for the process's life; its format changes
    logs.event("after", n=1)
    [line] = lines(capfd)
    assert json.loads(line) == {**json.loads(line), "event": "after", "n": 1}


def test_unthreaded_lines_are_written_as_they_are_logged(
    capfd: pytest.CaptureFixture[str],
) -> None:
    logs.configure("json", threaded=False)  # as in the span exporter, which may be killed
    logs.event("export failed", exporter="otlp")
    line = capfd.readouterr().err  # no writer stopped, nothing flushed: it is there already
    assert json.loads(line)["exporter"] == "otlp"
    assert logs._writer is None
