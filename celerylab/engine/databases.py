"""A database per grade for a Django lab (made, migrated from the project's models, dropped), or for a
plain-SQL lab (made and dropped; its ``tasks.py`` makes its tables through :func:`sql_engine`).

SQLite by default: a file in a temp folder of its own. PostgreSQL when asked (``--database
postgresql://user@host:5432/postgres``, or ``$CELERYLAB_DATABASE_URL``): a database of its own on that server,
``celerylab_<host>_<pid>_<token>``, dropped ``WITH (FORCE)`` at the end (the workers may still hold
connections). Either way nothing outlives the grade: :meth:`Database.drop` runs on success, failure and
Ctrl-C, and a grade killed outright (SIGKILL) leaves a database or folder whose owner is dead, which the
next grade on the same machine removes (:func:`sweep_stale`).

The lab's ``settings.py`` reads the grade's database with :func:`django_settings` from
``$CELERYLAB_DJANGO_DATABASE``, which the session sets for itself, the probe and every worker; outside a grade
(the learner's own ``manage.py``) it is a SQLite file in the project. The schema comes from the project's
models as they are: ``python -m celerylab.engine.databases migrate FOLDER`` makes the project's
migrations afresh in
a temp package (``MIGRATION_MODULES``) and applies them, so a learner who adds a unique constraint needs no
migration file for the grade.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from celerylab.engine import processes

CHOICE_ENV = "CELERYLAB_DATABASE_URL"  # the server to grade on (like --database); unset: SQLite
PROJECT_ENV = "CELERYLAB_DJANGO_DATABASE"  # the grade's own database, read by the project's settings
SQL_ENV = "CELERYLAB_SQL_DATABASE"  # the grade's own database for a plain-SQL lab, read by sql_engine()
MIGRATE_TIMEOUT = float(os.environ.get("CELERYLAB_MIGRATE_TIMEOUT", "60"))
MARK = "celerylab-migrate: "
SQLITE_PREFIX = "celerylab-db-"
PG_NAME = re.compile(r"^celerylab_([0-9a-f]{6})_(\d+)_[0-9a-f]{6}$")


class DatabaseUnavailable(RuntimeError):
    """The database server named for the grade cannot be used; the message says what to do."""


@dataclass
class Database:
    kind: str  # "sqlite" | "postgresql"
    url: str  # what the project connects to
    server: str | None = None  # PostgreSQL: the maintenance database the grade's was created from
    folder: Path | None = None  # SQLite: the temp folder holding the file

    def describe(self) -> str:
        return f"{self.kind}: {_redact(self.url)}"

    def drop(self) -> None:
        """Remove the database (and its folder); never raises, may be called twice."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                _drop_pg(self.server, urlsplit(self.url).path.lstrip("/"))


def create(choice: str | None = None) -> Database:
    """A fresh, empty database: on the PostgreSQL server ``choice`` names (or ``$CELERYLAB_DATABASE_URL``),
    else a SQLite file in a new temp folder."""
    choice = choice or os.environ.get(CHOICE_ENV) or "sqlite"
    sweep_stale(choice)
    if choice == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix=f"{SQLITE_PREFIX}{os.getpid()}-"))
        return Database("sqlite", f"sqlite://{folder / 'db.sqlite3'}", folder=folder)
    if not choice.startswith(("postgresql://", "postgres://")):
        raise DatabaseUnavailable(f"--database takes `sqlite` or a postgresql:// URL, not {choice!r}")
    name = f"celerylab_{_host_tag()}_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with _pg(choice) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # psycopg's errors, or psycopg missing
        raise DatabaseUnavailable(
            f"cannot create a database on {_redact(choice)}: {type(exc).__name__}: {exc}".strip()
            + "\nIs PostgreSQL running there, and may that user create databases? (SQLite needs nothing: "
            "leave --database out.)"
        ) from None
    parts = urlsplit(choice)
    return Database("postgresql", urlunsplit(parts._replace(path=f"/{name}")), server=choice)


def sweep_stale(choice: str) -> list[str]:
    """Drop what grades on this machine left when they were killed outright: databases and folders whose
    owning process is gone."""
    dropped = []
    for folder in Path(tempfile.gettempdir()).glob(f"{SQLITE_PREFIX}*-*"):
        pid = folder.name.removeprefix(SQLITE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            dropped.append(str(folder))
    if choice.startswith(("postgresql://", "postgres://")):
        with contextlib.suppress(Exception):
            for name in sorted(grade_databases(choice)):
                hit = PG_NAME.match(name)
                if hit and hit.group(1) == _host_tag() and not _alive(int(hit.group(2))):
                    _drop_pg(choice, name)
                    dropped.append(name)
    return dropped


def grade_databases(server: str) -> set[str]:
    """The names of the grade databases (``celerylab_...``) on a PostgreSQL server, whoever made them."""
    with _pg(server) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'celerylab%'")
        return {row[0] for row in rows}


def django_settings(default_sqlite: Path | str) -> dict[str, Any]:
    """``DATABASES["default"]`` for the project: the grade's database, or ``default_sqlite`` outside one.
    SQLite waits up to 5 s for a lock and takes the write lock when a transaction begins (``IMMEDIATE``), so
    two workers writing at once queue instead of failing with "database is locked"."""
    url = os.environ.get(PROJECT_ENV) or f"sqlite://{Path(default_sqlite).resolve()}"
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": unquote(parts.path),
            "OPTIONS": {"timeout": 5, "transaction_mode": "IMMEDIATE"},
        }
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


def sql_engine(default_sqlite: Path | str) -> Any:
    """A SQLAlchemy engine on the grade's database (``$CELERYLAB_SQL_DATABASE``), or on ``default_sqlite``
    outside a grade. SQLite runs in WAL mode and waits up to 15 s for the write lock, so workers writing at
    once queue instead of failing with "database is locked"; PostgreSQL goes through psycopg 3.

    pysqlite opens a transaction only before a write, so a ``SAVEPOINT`` (``conn.begin_nested()``) as the
    first statement would open one of its own, and its ``RELEASE`` would commit it: a claim made in a
    savepoint would outlive a rollback of the transaction around it. The engine opens the transaction first,
    as PostgreSQL does, so savepoints nest (everything else keeps pysqlite's own timing)."""
    from sqlalchemy import create_engine, event

    url = os.environ.get(SQL_ENV) or f"sqlite://{Path(default_sqlite).resolve()}"
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        engine = create_engine(f"sqlite:///{unquote(parts.path)}", connect_args={"timeout": 15})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

        @event.listens_for(engine, "savepoint")
        def _nest(conn: Any, _name: str) -> None:
            dbapi_conn = conn.connection.dbapi_connection
            if not dbapi_conn.in_transaction:
                dbapi_conn.execute("BEGIN")

        return engine
    return create_engine(urlunsplit(parts._replace(scheme="postgresql+psycopg")), pool_pre_ping=True)


def migrate(folder: Path, timeout: float = MIGRATE_TIMEOUT) -> str | None:
    """Make the project's schema in the grade's database, in a throwaway process (the learner's models may
    not import, or hang). Returns None, or what went wrong, for a verdict."""
    scratch = Path(tempfile.mkdtemp(prefix="celerylab-migrate-"))
    log = scratch / "migrate.log"
    cmd = [sys.executable, "-m", "celerylab.engine.databases", "migrate", str(folder), str(scratch)]
    proc = processes.spawn(cmd, log_path=log, cwd=folder)
    deadline = time.monotonic() + timeout
    try:
        while True:
            exited = proc.poll() is not None
            for line in reversed(log.read_text(errors="replace").splitlines()):
                if line.startswith(MARK):
                    report = json.loads(line[len(MARK) :])
                    return None if report["ok"] else report["message"]
            if exited:
                tail = log.read_text(errors="replace")[-1500:]
                return f"migrating ended Python (exit code {proc.returncode}):\n{tail}".rstrip()
            if time.monotonic() > deadline:
                return f"making the database's tables took longer than {timeout:.0f} s"
            time.sleep(0.02)  # polling the child's own output, bounded by the deadline above
    finally:
        processes.kill_group(proc)
        shutil.rmtree(scratch, ignore_errors=True)


def _migrate_here(folder: Path, scratch: Path) -> dict[str, Any]:
    """In the throwaway process: migrations for the project's own apps made afresh under ``scratch``
    (their shipped ones, if any, are ignored), then every migration applied."""
    sys.path[:0] = [str(scratch), str(folder)]
    try:
        import django
        from django.apps import apps
        from django.conf import settings
        from django.core.management import call_command

        django.setup()
        own = [c.label for c in apps.get_app_configs() if Path(c.path).resolve().is_relative_to(folder)]
        (scratch / "celerylab_migrations").mkdir()
        (scratch / "celerylab_migrations" / "__init__.py").touch()
        settings.MIGRATION_MODULES = {label: f"celerylab_migrations.{label}" for label in own}
        if own:
            call_command("makemigrations", *own, interactive=False, verbosity=0)
        call_command("migrate", interactive=False, verbosity=0)
    except BaseException as exc:  # the learner's models may raise anything at import
        return {"ok": False, "message": f"{type(exc).__name__}: {str(exc)[:800]}"}
    return {"ok": True}


def _pg(url: str):
    import psycopg

    parts = urlsplit(url)
    if not parts.path.strip("/"):
        url = urlunsplit(parts._replace(path="/postgres"))
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _drop_pg(server: str, name: str) -> None:
    with _pg(server) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "migrate":
        where = Path(sys.argv[2]).resolve()
        os.chdir(where)
        print(MARK + json.dumps(_migrate_here(where, Path(sys.argv[3]))), flush=True)
        sys.exit(0)
    sys.exit("usage: python -m celerylab.engine.databases migrate FOLDER SCRATCH")
