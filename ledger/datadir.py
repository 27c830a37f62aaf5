"""The data directory: where one log's database, signing key and HMAC salt live.

Layout::

    DIR/ledger.db              SQLite ledger (plus -wal and -shm while open)
    DIR/ledger.db.lookup       its query index, rebuilt from the ledger if deleted
    DIR/keys/log.key           active signing key, Go signed-note signer format, 0600
    DIR/keys/retired/ID.key    keys rotated out, kept for the record, 0600
    DIR/keys/log.key.next      a rotation in progress (see :meth:`DataDir.rotate`)
    DIR/hmac.salt              32 random bytes for sealing sensitive fields, 0600
    DIR/replay-floor.json      where `govgate serve` starts reading (gateway.recovery)

Secrets are written with ``O_CREAT | O_EXCL`` and mode 0600 from the start
(no window where they are readable), existing files are never overwritten,
and a key file that group or others can read is refused, as ssh refuses one.
Nothing here logs or prints a secret.

Example::

    d = DataDir("data"); d.generate_key("govgate.example/log")
    async with d.open_ledger() as log: ...
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from pathlib import Path

from ledger.errors import KeyFormatError, LedgerError
from ledger.log import Ledger, LedgerConfig
from ledger.note import NoteSigner
from ledger.sqlite import SQLiteStore
from ledger.store import LedgerStore

__all__ = ["DEFAULT_ORIGIN", "DataDir", "default_data_dir"]

DEFAULT_ORIGIN = "govgate.local/ledger"
_SALT_BYTES = 32


def default_data_dir() -> Path:
    """``$GOVGATE_DATA_DIR``, else ``$XDG_DATA_HOME/govgate``, else ``~/.local/share/govgate``."""
    env = os.environ.get("GOVGATE_DATA_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "govgate"


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise LedgerError(f"{path} already exists; refusing to overwrite it") from e
    try:
        os.fchmod(fd, 0o600)  # whatever the umask said
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_secret(path: Path, what: str) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise LedgerError(f"no {what} at {path}") from e
    if not stat.S_ISREG(st.st_mode):
        raise KeyFormatError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFormatError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    return path.read_bytes()


def _load_signer(path: Path) -> NoteSigner:
    raw = _read_secret(path, "signing key")
    try:
        return NoteSigner.from_key_string(raw.decode("utf-8").removesuffix("\n"))
    except (UnicodeDecodeError, KeyFormatError) as e:
        raise KeyFormatError(f"{path} is not a signer key: {e}") from None


class DataDir:
    """One log's files. Methods raise :class:`LedgerError` with what to do next."""

    def __init__(
        self, path: str | Path, ledger_url: str | None = None, *, shared: bool = False
    ) -> None:
        """``ledger_url``: a ``postgresql://`` database holding the log instead of
        ``ledger.db`` (the keys and the salt stay in this directory). ``shared``: gateway
        replicas in several processes append to ``ledger.db`` (a database always is)."""
        self.path = Path(path)
        self.ledger_url = ledger_url or None
        self.shared = shared

    @property
    def db_path(self) -> Path:
        return self.path / "ledger.db"

    @property
    def key_path(self) -> Path:
        return self.path / "keys" / "log.key"

    @property
    def next_key_path(self) -> Path:
        return self.path / "keys" / "log.key.next"

    @property
    def salt_path(self) -> Path:
        return self.path / "hmac.salt"

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is one of this directory's own files (the ledger database and
        the files SQLite keeps beside it, its query index, the salt, anything under
        ``keys/``): a file a command must never write over."""
        target = path.resolve()
        keys = (self.path / "keys").resolve()
        if target == keys or keys in target.parents:
            return True
        db, salt = self.db_path.resolve(), self.salt_path.resolve()
        if target == salt or target.parent != db.parent:
            return target == salt
        return target.name.startswith(db.name)  # ledger.db, -wal, -shm, .lookup, ...

    def generate_key(self, name: str = DEFAULT_ORIGIN) -> NoteSigner:
        """Create the log's signing key; refuse if one exists."""
        if self.key_path.exists():
            raise LedgerError(
                f"{self.key_path} already exists; refusing to overwrite a signing key"
            )
        signer = NoteSigner.generate(name)
        _write_secret(self.key_path, (signer.private_key_string() + "\n").encode())
        self.salt()
        return signer

    def signer(self) -> NoteSigner:
        """The active signing key, finishing a rotation that committed before a crash."""
        if not self.key_path.exists() and self.next_key_path.exists():
            self.recover_rotation_files()  # died between the two renames of _retire
        if not self.key_path.exists():
            raise LedgerError(
                f"no signing key in {self.path}; create one with: "
                f"govgate keys generate --data {self.path}"
            )
        return _load_signer(self.key_path)

    def salt(self, *, create: bool = True) -> bytes:
        """The HMAC salt for sensitive fields, created on first use unless ``create`` is False."""
        if not self.salt_path.exists() and create:
            with contextlib.suppress(LedgerError):  # created concurrently: read it below
                _write_secret(self.salt_path, os.urandom(_SALT_BYTES))
        data = _read_secret(self.salt_path, "HMAC salt")
        if len(data) != _SALT_BYTES:
            raise KeyFormatError(f"{self.salt_path} must hold {_SALT_BYTES} bytes")
        return data

    def store(self) -> LedgerStore:
        if self.ledger_url is None:
            return SQLiteStore(self.db_path, shared=self.shared)
        from ledger.postgres import PostgresStore  # asyncpg only where it is used

        return PostgresStore(self.ledger_url)

    def has_ledger(self) -> bool:
        """Whether there is a ledger to read (a database URL always counts)."""
        return self.ledger_url is not None or self.db_path.exists()

    def open_ledger(self, config: LedgerConfig | None = None) -> Ledger:
        """A :class:`Ledger` on this directory (use as ``async with``)."""
        self.recover_rotation_files()
        return Ledger(self.store(), self.signer(), salt=self.salt(), config=config)

    async def rotate(self, ledger: Ledger, reason: str = "rotation") -> NoteSigner:
        """Rotate the log key through ``ledger`` and move the key files to match.

        The new key is written (0600) before the ``key`` record is appended, and
        the files are swapped only after the record is durable; if the process
        dies in between, :meth:`recover_rotation_files` finishes or undoes the
        swap from what the log head says.
        """
        new = NoteSigner.generate(ledger.origin)
        _write_secret(self.next_key_path, (new.private_key_string() + "\n").encode())
        try:
            await ledger.rotate_key(new, reason)
        except BaseException:
            self.next_key_path.unlink(missing_ok=True)
            raise
        self._retire(ledger_key_id=new.key_id)
        return new

    def _retire(self, *, ledger_key_id: str) -> None:
        if self.key_path.exists():  # else: moved already, by a retire a crash cut short
            old = _load_signer(self.key_path)
            retired = self.path / "keys" / "retired" / f"{old.key_id}.key"
            retired.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(self.key_path, retired)
        os.replace(self.next_key_path, self.key_path)
        if self.signer().key_id != ledger_key_id:
            raise LedgerError(f"{self.key_path} is not the key the log now names ({ledger_key_id})")

    def recover_rotation_files(self) -> None:
        """Finish or undo a key-file swap interrupted by a crash."""
        if not self.next_key_path.exists():
            return
        pending = _load_signer(self.next_key_path)
        if self.ledger_url is not None:
            raise LedgerError(
                f"{self.next_key_path} is left from an interrupted key rotation; with a "
                "PostgreSQL ledger, compare its key id with the log head's and keep the one "
                "the log names before starting again"
            )
        if self._head_key_id() == pending.key_id:
            self._retire(ledger_key_id=pending.key_id)
        else:
            self.next_key_path.unlink()

    def _head_key_id(self) -> str:
        if not self.db_path.exists():
            return ""
        with sqlite3.connect(self.db_path) as db:
            row = db.execute("SELECT key_id FROM log_head").fetchone()
        return str(row[0]) if row else ""
