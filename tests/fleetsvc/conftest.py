"""Fixtures of the fleet service tests: a private PostgreSQL cluster for the session (Debian's
postgresql 15: initdb + pg_ctl in a temporary directory, as the ``postgres`` user when the
tests run as root, listening on 127.0.0.1 and a free port), a fresh database per test on it or
on SQLite (``db_url`` is parametrized: the same tests run on both), administrators with a
password and a TOTP secret."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.devtools.broker import free_port
from appliance.fleetsvc.auth import add_user
from appliance.fleetsvc.db import FleetDB

PG_BIN = Path(os.environ.get("APPLIANCE_PG_BIN", "/usr/lib/postgresql/15/bin"))
PASSWORD = "correct horse battery staple"


@dataclass
class PgCluster:
    port: int
    base: Path

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_db(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        import sqlalchemy as sa

        eng = sa.create_engine(
            self.url().replace("postgresql://", "postgresql+psycopg://"),
            isolation_level="AUTOCOMMIT",
        )
        with eng.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        eng.dispose()
        return self.url(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def private_cluster(*, durable: bool = False) -> Iterator[PgCluster]:
    """A PostgreSQL cluster of its own in a temporary directory, stopped and removed at exit
    (the tests' session fixture and bench/fleet_service.py). Tests run it with ``fsync=off``;
    ``durable`` keeps PostgreSQL's defaults (fsync on, synchronous commit), for benchmarks."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(f"PostgreSQL not installed ({PG_BIN}/initdb): run scripts/setup")
    # Not under pytest's temporary directory: the postgres user cannot enter it (mode 0700).
    base = Path(tempfile.mkdtemp(prefix="fleetsvc-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    try:
        subprocess.run(
            _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U",
                          "postgres", "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True,
        )  # fmt: skip
        port = free_port()
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock}"
        if not durable:
            opts += " -c fsync=off"
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "pg.log"),
                          "-o", opts, "-w", "-t", "60", "start"]),
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            yield PgCluster(port, base)
        finally:
            subprocess.run(
                _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                              "-w", "stop"]),
                check=False, capture_output=True,
            )  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    try:
        with private_cluster() as cluster:
            yield cluster
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.create_db()


@pytest.fixture
def fleet_db(db_url: str) -> Iterator[FleetDB]:
    db = FleetDB(db_url)
    db.migrate()
    yield db
    db.close()


@pytest.fixture
def make_user(fleet_db: FleetDB) -> Callable[[str, str], str]:
    """Create an administrator; returns the TOTP secret."""

    def make(name: str, role: str) -> str:
        return add_user(fleet_db, name, role, PASSWORD)

    return make
