"""A throwaway PostgreSQL for the tests: initdb + pg_ctl, a unix socket in a temporary
directory, no TCP (``listen_addresses=''``). As root, the server runs as the ``postgres``
user (``runuser``), which owns the temporary directory.

One server per test process (each pytest-xdist worker starts its own); each test gets a
fresh database. ``pwuser``/``secret-pw`` authenticates by password, for the tests of a
wrong password; every other role is trusted on the socket.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PORT = 5432
PASSWORD_USER = "pwuser"
PASSWORD = "secret-pw"


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    if candidates:
        return candidates[-1]
    raise RuntimeError(f"PostgreSQL's {name} not found on PATH or in /usr/lib/postgresql/*/bin; "
                       "install the 'postgresql' package (.ci/run does)")


class PgServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tinysched-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._names = itertools.count(1)
        self.initdb()

    # -- lifecycle -----------------------------------------------------------------------

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        return subprocess.run([*prefix, *argv], check=check, capture_output=True, text=True,
                              timeout=120, cwd=self.root)

    def initdb(self) -> None:
        self._run(find_binary("initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
        (self.data / "pg_hba.conf").write_text(
            f"local all {PASSWORD_USER} scram-sha-256\nlocal all all trust\n")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.socket_dir}'\n"
                       f"port = {PORT}\nfsync = off\nsynchronous_commit = off\n"
                       "full_page_writes = off\nmax_connections = 200\n"
                       "shared_buffers = 16MB\nlog_min_messages = warning\n")
        self.start()
        self.psql("postgres", f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")

    def start(self) -> None:
        self._run(find_binary("pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(find_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop",
                  check=False)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -----------------------------------------------------------------------

    def url(self, dbname: str, user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}/{dbname}?host={self.socket_dir}&port={PORT}"

    def psql(self, dbname: str, sql: str) -> str:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cur = conn.execute(sql)
            return str(cur.fetchall()) if cur.description else ""

    def drop_database(self, url: str) -> None:
        """Drop a test's database (each one is ~8 MB on disk), its sessions ended."""
        name = url.split("?")[0].rsplit("/", 1)[1]
        self.psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql("postgres", f"CREATE DATABASE {name} TEMPLATE template0")
        self.psql(name, f"GRANT ALL ON SCHEMA public TO {PASSWORD_USER}")
        return self.url(name)
