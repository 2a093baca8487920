"""One PostgreSQL connection per process, opened lazily, every call bounded in time.

Errors become :class:`SourceError` (the server is unreachable or failed: a pass exits 1)
or :class:`ConfigError` (a bad password, an unknown user or database: exit 2). Messages
name the server as ``user@host:port/dbname``; the password never appears in them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from scheduler.errors import ConfigError, SourceError

try:
    import psycopg
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]

#: Bounds on every connection: connect, each statement, locks, a silent peer.
CONNECT_TIMEOUT_SEC = 5
STATEMENT_TIMEOUT_MS = 30_000
LOCK_TIMEOUT_MS = 10_000
TCP_USER_TIMEOUT_MS = 10_000
#: SQLSTATEs that mean the configuration is wrong, not that the server is down.
CONFIG_SQLSTATES = {
    "28P01": "wrong password",
    "28000": "authentication refused",
    "3D000": "database does not exist",
}
_CONFIG_PHRASES = (("password authentication failed", "wrong password"),
                   ("does not exist", "user or database does not exist"),
                   ("no password supplied", "no password supplied"),
                   ("no pg_hba.conf entry", "authentication refused"))

#: Connections inherited through fork: kept referenced so a child never finalizes (and so
#: terminates) its parent's session; the child opens its own.
_INHERITED: list[Any] = []


def describe(url: str) -> str:
    """``postgresql://user@host:port/dbname`` of ``url``, without the password."""
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or ["local socket"])[0]
        port_text = parts.port or (query.get("port") or [""])[0]
        port = f":{port_text}" if port_text else ""
        user = f"{unquote(parts.username)}@" if parts.username else ""
        dbname = unquote(parts.path.lstrip("/")) or (query.get("dbname") or [""])[0]
    except ValueError:
        return "postgresql://(unparsable URL)"
    return f"postgresql://{user}{host}{port}/{dbname}"


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def require_driver() -> None:
    if psycopg is None:
        raise ConfigError("PostgreSQL support needs psycopg 3: "
                          "pip install 'tinyscheduler[postgres]'")


class Database:
    """The connection of this process to one server; reconnects after a failure."""

    def __init__(self, url: str, *, application: str = "tinyscheduler") -> None:
        require_driver()
        self.url = url
        self.server = describe(url)
        self.application = application
        self._conn: Any = None
        self._pid = 0

    def __repr__(self) -> str:
        return f"Database({self.server!r})"

    # -- connecting ----------------------------------------------------------------------

    def connect(self, **extra: Any) -> Any:
        """A new autocommit connection (callers own it), bounded in time."""
        options = (f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
                   f"-c lock_timeout={LOCK_TIMEOUT_MS}")
        try:
            return psycopg.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SEC,
                options=options, application_name=self.application, keepalives=1,
                keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                tcp_user_timeout=TCP_USER_TIMEOUT_MS, **extra)
        except psycopg.Error as exc:
            raise self.error(exc, "cannot connect") from None

    def connection(self) -> Any:
        if self._conn is not None and self._pid != os.getpid():
            _INHERITED.append(self._conn)
            self._conn = None
        if self._conn is not None and self._conn.closed:
            self._conn = None
        if self._conn is None:
            self._conn = self.connect()
            self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    # -- errors --------------------------------------------------------------------------

    def error(self, exc: BaseException, doing: str = "") -> Exception:
        """The project's error for a driver error: config (exit 2) or source (exit 1)."""
        text = " ".join(str(exc).split())
        password = _password(self.url)
        if password:
            text = text.replace(password, "********")
        prefix = f"postgres {self.server}: " + (f"{doing}: " if doing else "")
        sqlstate = getattr(exc, "sqlstate", None)
        why = CONFIG_SQLSTATES.get(sqlstate or "")
        if why is None and isinstance(exc, psycopg.OperationalError) and doing:
            why = next((w for phrase, w in _CONFIG_PHRASES if phrase in text), None)
        if why is not None:
            return ConfigError(f"{prefix}{why} ({text}); check "
                               "TINYSCHEDULER_DATABASE_URL")
        return SourceError(prefix + text)

    def _failed(self, exc: BaseException) -> Exception:
        """Map and, when the session is gone, drop it so the next call reconnects."""
        if isinstance(exc, psycopg.OperationalError) or (
                self._conn is not None and self._conn.closed):
            self.close()
        return self.error(exc)

    # -- running SQL ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction; committed on success, rolled back otherwise."""
        conn = self.connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise self._failed(exc) from None

    def query(self, sql: str, params: Any = ()) -> list[tuple]:
        conn = self.connection()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise self._failed(exc) from None
