"""The model registry: content-addressed model files, their cards, and which one is active.

Layout of a registry directory (``<data dir>/models`` by default)::

    <id>.ubj          the model file; <id> is its SHA-256
    <id>.card.json    its model card
    <id>.card.md      the card for people
    ACTIVE            the id of the active model (absent: the bundled default)

The bundled default model lives in ``explain/models/`` inside the package,
with the same layout plus ``DEFAULT`` naming it; the registry lists it next to
the site's own models and uses it until another is activated.

Every load re-hashes the file and checks its schema (:func:`~explain.model.load_model`):
a model that was changed, truncated or trained on another schema is refused
with a clear error and never half-loaded. Writes go through a temporary
file and ``os.replace``, so a crash leaves either the old file or the new one.

Recording activations in the ledger is the caller's job (the CLI and the
gateway do it): this package does not import the ledger.

Example::

    reg = Registry(data_dir / "models")
    model_id = reg.add(trained.raw, trained.card)
    reg.activate(model_id)
    model = reg.load()          # the active one, verified
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explain.card import CARD_FORMAT, render_markdown
from explain.drift import Profile
from explain.errors import ExplainError, ModelCorruptError, ModelNotFoundError
from explain.model import Model, ModelId, load_model, model_id_of

__all__ = ["BUNDLED_DIR", "Entry", "Registry"]

BUNDLED_DIR = Path(__file__).with_name("models")
_ID = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]{4,64}")
MAX_CARD_BYTES = 4 << 20


@dataclass(frozen=True)
class Entry:
    id: ModelId
    path: Path
    bundled: bool
    active: bool

    @property
    def card_path(self) -> Path:
        return self.path.with_name(f"{self.id}.card.json")


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry:
    def __init__(self, root: str | Path, *, bundled: Path | None = BUNDLED_DIR) -> None:
        self.root = Path(root)
        self.bundled = bundled

    # -- what is here -----------------------------------------------------------------

    def default_id(self) -> ModelId | None:
        """The bundled default model's id, or None when no model is bundled."""
        if self.bundled is None:
            return None
        marker = self.bundled / "DEFAULT"
        try:
            text = marker.read_text().strip()
        except FileNotFoundError:
            return None
        if not _ID.fullmatch(text):
            raise ModelCorruptError(f"{marker} does not hold a model id")
        return ModelId(text)

    def active_id(self) -> ModelId:
        """The active model: the one named in ACTIVE, else the bundled default."""
        marker = self.root / "ACTIVE"
        try:
            text = marker.read_text().strip()
        except FileNotFoundError:
            default = self.default_id()
            if default is None:
                raise ModelNotFoundError(
                    "no model is active and none is bundled: train one with "
                    "'govgate model train --activate'"
                ) from None
            return default
        if not _ID.fullmatch(text):
            raise ModelCorruptError(f"{marker} does not hold a model id")
        return ModelId(text)

    def _paths(self) -> Iterator[tuple[Path, bool]]:
        if self.root.is_dir():
            for p in sorted(self.root.glob("*.ubj")):
                yield p, False
        if self.bundled is not None and self.bundled.is_dir():
            for p in sorted(self.bundled.glob("*.ubj")):
                yield p, True

    def entries(self) -> list[Entry]:
        try:
            active: ModelId | None = self.active_id()
        except (ModelNotFoundError, ModelCorruptError):  # listing still works; load() refuses
            active = None
        seen: set[str] = set()
        out = []
        for path, bundled in self._paths():
            if not _ID.fullmatch(path.stem) or path.stem in seen:
                continue
            seen.add(path.stem)
            mid = ModelId(path.stem)
            out.append(Entry(mid, path, bundled, mid == active))
        return out

    def resolve(self, ref: str | None = None) -> Entry:
        """The entry for a full id or a unique prefix of at least 4 hex digits.

        ``None`` or ``"active"`` means the active model.
        """
        if ref is None or ref == "active":
            ref = self.active_id()
        ref = ref.strip().lower()
        if not _PREFIX.fullmatch(ref):
            raise ModelNotFoundError(
                f"{ref!r} is not a model id (64 hex digits, or a prefix of at least 4)"
            )
        matches = [e for e in self.entries() if e.id.startswith(ref)]
        if not matches:
            raise ModelNotFoundError(f"no model {ref} in {self.root} or the bundled models")
        if len(matches) > 1:
            raise ModelNotFoundError(f"{ref} is ambiguous: {', '.join(e.id[:12] for e in matches)}")
        return matches[0]

    # -- reading ----------------------------------------------------------------------

    def load(self, ref: str | None = None, *, nthread: int = 1) -> Model:
        """Load and verify a model (default: the active one)."""
        entry = self.resolve(ref)
        try:
            raw = entry.path.read_bytes()
        except OSError as err:
            raise ModelCorruptError(f"cannot read model file {entry.path}: {err}") from err
        return load_model(raw, expected_id=entry.id, nthread=nthread)

    def card(self, ref: str | None = None) -> dict[str, Any]:
        entry = self.resolve(ref)
        path = entry.card_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ModelNotFoundError(f"model {entry.id[:12]} has no card ({path})") from None
        if len(raw) > MAX_CARD_BYTES:
            raise ModelCorruptError(f"card {path} is larger than {MAX_CARD_BYTES} bytes")
        try:
            card = json.loads(raw)
        except ValueError as err:
            raise ModelCorruptError(f"card {path} is not valid JSON: {err}") from err
        if not isinstance(card, dict) or card.get("model_id") != entry.id:
            raise ModelCorruptError(f"card {path} does not describe model {entry.id[:12]}")
        if card.get("format") != CARD_FORMAT:
            raise ModelCorruptError(f"card {path} is not a {CARD_FORMAT} card")
        try:  # every field a reader of the card uses is there, of its kind
            if not isinstance(card["data"], dict) or not isinstance(card["metrics"], dict):
                raise TypeError("data and metrics must be objects")
            render_markdown(card)
            Profile.from_json(card.get("reference"))  # the drift metric's and the reports'
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, ExplainError) as err:
            raise ModelCorruptError(
                f"card {path} is malformed ({type(err).__name__}: {err})"
            ) from None
        return card

    def verify(self, ref: str | None = None) -> Model:
        """Load the model and its card; raise if either is wrong."""
        model = self.load(ref)
        self.card(model.id)
        return model

    # -- writing ----------------------------------------------------------------------

    def add(self, raw: bytes, card: dict[str, Any]) -> ModelId:
        """Store a verified model and its card; returns its id. Adding twice is harmless."""
        mid = model_id_of(raw)
        if card.get("model_id") != mid:
            raise ValueError("the card does not name this model")
        load_model(raw, expected_id=mid)  # refuse to store what could not be loaded
        text = json.dumps(card, indent=2, sort_keys=False).encode() + b"\n"
        _write_atomic(self.root / f"{mid}.card.json", text)
        _write_atomic(self.root / f"{mid}.card.md", render_markdown(card).encode())
        _write_atomic(self.root / f"{mid}.ubj", raw)  # last: a model without a card is never listed
        return mid

    def activate(self, ref: str) -> Model:
        """Verify a model and make it the active one. Returns the verified model."""
        model = self.verify(ref)
        _write_atomic(self.root / "ACTIVE", f"{model.id}\n".encode())
        return model
