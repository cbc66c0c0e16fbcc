"""A throwaway PostgreSQL cluster from Debian's packages, for tests that need a real Postgres.

`start_cluster()` runs `initdb` (a `dagster` superuser with a random password, scram-sha-256 auth),
starts the server on 127.0.0.1 on a free port with its socket in the cluster's own folder, creates the
`dagster` database, yields a `PgCluster` and stops the server (`pg_ctl stop -m fast`) and deletes the
folder afterwards, also when the test fails. PostgreSQL refuses to run as root: as root (tests and CI
here) the server runs as the `postgres` system user of the Debian package, in a folder that user owns.
The folder is made directly under the system temp dir: pytest's own tmp dirs sit in a root-only
(0700) folder that the `postgres` user cannot enter.

Use the `postgres_cluster` fixture (import it into the test module) or `start_cluster()` directly.
"""

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from .helpers import free_port


def find_pg_bin() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` holding initdb (None if PostgreSQL is not installed)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class PgCluster:
    host: str
    port: int
    user: str
    password: str
    db: str
    folder: Path
    startup_s: float  # initdb + server start + CREATE DATABASE, measured

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster-postgres.yaml reads."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USER": self.user,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": self.db}

    def connect(self, db: str | None = None):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=db or self.db)

    def query(self, sql: str, args=()) -> list[tuple]:
        with self.connect() as con, con.cursor() as cur:
            cur.execute(sql, args)
            rows = cur.fetchall()
        con.close()
        return rows


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        server_log = log.read_text() if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stdout}{proc.stderr}{server_log}")


@contextmanager
def start_cluster(user: str = "dagster", db: str = "dagster"):
    pg_bin = find_pg_bin()
    if pg_bin is None:
        raise FileNotFoundError("no /usr/lib/postgresql/*/bin/initdb: install Debian's `postgresql` package")
    t0 = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="posttrain-pg-"))
    data, sock, log, pwfile = folder / "data", folder / "sock", folder / "server.log", folder / "pwfile"
    sock.mkdir()
    password = secrets.token_urlsafe(18)
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        for p in (sock, pwfile):
            shutil.chown(p, "postgres", "postgres")
    started = False
    try:
        _run([str(pg_bin / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}", "--auth=scram-sha-256",
              "--encoding=UTF8", "--locale=C", "--no-instructions", "--no-sync"], "initdb")
        port = free_port()
        # loopback only; no fsync (here and initdb's --no-sync): the cluster is thrown away (a Dagster
        # restart is what is tested, not a PostgreSQL crash)
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off -c full_page_writes=off"
        _run([str(pg_bin / "pg_ctl"), "start", "-D", str(data), "-w", "-t", "60", "-l", str(log), "-o", opts],
             "pg_ctl start", log)
        started = True
        cluster = PgCluster("127.0.0.1", port, user, password, db, folder, 0.0)
        con = cluster.connect(db="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{db}"')
        con.close()
        yield replace(cluster, startup_s=time.perf_counter() - t0)
    finally:
        if started:
            _run([str(pg_bin / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "60"], "pg_ctl stop", log)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_cluster():
    """A running throwaway cluster (module-scoped); skipped only when PostgreSQL is not installed."""
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; `make venv` installs it)")
    with start_cluster() as cluster:
        yield cluster
