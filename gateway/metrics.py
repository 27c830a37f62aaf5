"""The gateway's metrics: OpenTelemetry instruments, read by Prometheus or pushed by OTLP.

Instruments (attributes in brackets):

* ``govgate.decisions`` counter [``govgate.decision.state``, ``govgate.decision.verb``]:
  one per decision, by the state it was answered with;
* ``govgate.decision.duration`` histogram, seconds [``govgate.stage``]: the whole
  decision (``decide``) and each stage (``describe``, ``score``, ``policy``,
  ``ledger.append``, ``execute``, ...);
* ``govgate.ledger.append.duration`` histogram, seconds: one durable append;
* ``govgate.ledger.size`` gauge: records in the ledger, as of the last append;
* ``govgate.approvals.pending`` gauge: decisions waiting for people;
* ``govgate.approval.wait`` histogram, seconds: from a decision to the review that
  completed it (approved or denied);
* ``govgate.model.fallbacks`` counter: decisions made by the policy's fallback
  because the model could not score;
* ``govgate.model.drift.psi`` gauge [``govgate.feature``]: population stability
  index of the last ``window`` scored decisions against the active model's training
  profile (explain/drift.py);
* ``govgate.overload.refused`` counter: proposals refused with ``RESOURCE_EXHAUSTED``.

Export: a Prometheus scrape endpoint (``govgate serve --metrics-listen``, OpenTelemetry's
Prometheus exporter), and OTLP when ``OTEL_METRICS_EXPORTER`` or an OTLP endpoint
says so, by the same rule as tracing (docs/operations.md).

Example::

    metrics = Metrics(provider.get_meter("govgate"), profile)
    metrics.decided(decision)
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Iterable

import numpy as np
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from explain.drift import Profile, drift
from explain.features import FEATURE_NAMES

__all__ = ["Metrics"]

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_APPROVAL_SECONDS = (1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0)


class Metrics:
    """govgate's instruments on ``meter``; every method is cheap and never raises."""

    def __init__(
        self,
        meter: Meter,
        profile: Profile | None = None,
        *,
        pending: Callable[[], int] = lambda: 0,
        window: int = 1000,
    ) -> None:
        self._profile = profile
        self._pending = pending
        self._recent: collections.deque[list[float]] = collections.deque(maxlen=window)
        self._lock = threading.Lock()  # observable callbacks run on the exporter's thread
        self._ledger_size = 0
        self.decisions = meter.create_counter(
            "govgate.decisions", unit="{decision}", description="Decisions by state and verb."
        )
        self.duration = meter.create_histogram(
            "govgate.decision.duration", unit="s",
            description="Time of a whole decision (stage decide) and of each stage.",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )  # fmt: skip
        self.append = meter.create_histogram(
            "govgate.ledger.append.duration", unit="s",
            description="Time of one durable ledger append.",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )  # fmt: skip
        self.approval_wait = meter.create_histogram(
            "govgate.approval.wait", unit="s",
            description="From a decision to the review that completed it.",
            explicit_bucket_boundaries_advisory=_APPROVAL_SECONDS,
        )  # fmt: skip
        self.fallbacks = meter.create_counter(
            "govgate.model.fallbacks", unit="{decision}",
            description="Decisions made by the policy's fallback: the model could not score.",
        )  # fmt: skip
        self.refused = meter.create_counter(
            "govgate.overload.refused", unit="{call}",
            description="Proposals refused with RESOURCE_EXHAUSTED.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "govgate.ledger.size", [self._observe_size], unit="{record}",
            description="Records in the ledger, as of the last append.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "govgate.approvals.pending", [self._observe_pending], unit="{decision}",
            description="Decisions waiting for people.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "govgate.model.drift.psi", [self._observe_drift], unit="1",
            description="PSI of recent decisions' features against the model's training.",
        )  # fmt: skip

    def watch_pending(self, count: Callable[[], int]) -> None:
        """Where ``govgate.approvals.pending`` is read from (the gateway, once it exists)."""
        self._pending = count

    # -- what the gateway reports ---------------------------------------------------------

    def stage(self, name: str, seconds: float) -> None:
        self.duration.record(seconds, {"govgate.stage": name})

    def appended(self, index: int, seconds: float) -> None:
        self.append.record(seconds)
        self._ledger_size = max(self._ledger_size, index + 1)

    def decided(self, state: str, verb: str, *, fallback: bool,
                features: Iterable[float] | None) -> None:  # fmt: skip
        self.decisions.add(1, {"govgate.decision.state": state, "govgate.decision.verb": verb})
        if fallback:
            self.fallbacks.add(1)
        if features is not None and self._profile is not None:
            with self._lock:
                self._recent.append(list(features))

    def reviewed(self, waited: float) -> None:
        self.approval_wait.record(max(waited, 0.0))

    # -- observed at collection -------------------------------------------------------------

    def _observe_size(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._ledger_size)] if self._ledger_size else []

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._pending())]

    def _observe_drift(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            rows = list(self._recent)
        if self._profile is None or len(rows) < 50:  # too few to say anything
            return []
        x = np.asarray(rows, dtype=np.float32)
        return [
            Observation(d.psi, {"govgate.feature": d.feature})
            for d in drift(self._profile, x)
            if math.isfinite(d.psi)
        ]


assert len(FEATURE_NAMES) > 0  # the drift gauge reports one series per feature
