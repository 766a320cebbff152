"""The engine support for project labs: per-grade databases, overlays of mutant folders, the publish log."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from celerylab.engine import databases, runtime
from celerylab.engine.publishing import PublishLog
from celerylab.grading import labs, mutation

POSTGRES = os.environ.get("CELERYLAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_answers() -> bool:
    try:
        databases.grade_databases(POSTGRES)
    except Exception:  # psycopg's errors: no server here
        return False
    return True


def test_the_project_reads_the_grades_database_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(databases.PROJECT_ENV, raising=False)
    own = databases.django_settings(tmp_path / "db.sqlite3")
    assert own["ENGINE"].endswith("sqlite3") and own["NAME"] == str(tmp_path / "db.sqlite3")
    monkeypatch.setenv(databases.PROJECT_ENV, "postgresql://ada:s%40cret@db.local:6543/celerylab_x")
    pg = databases.django_settings(tmp_path / "db.sqlite3")
    assert (pg["ENGINE"], pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "django.db.backends.postgresql",
        "celerylab_x",
        "ada",
        "s@cret",
        "db.local",
        "6543",
    )


def test_a_sqlite_database_lives_in_its_own_folder_and_goes_with_it():
    db = databases.create("sqlite")
    assert db.kind == "sqlite" and db.folder.is_dir() and str(db.folder) in db.url
    db.drop()
    db.drop()  # twice is fine
    assert not db.folder.exists()


def test_a_folder_left_by_a_killed_grade_is_swept(tmp_path, monkeypatch):
    monkeypatch.setattr(databases.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f"{databases.SQLITE_PREFIX}{dead.stdout.strip()}-abc"
    live = tmp_path / f"{databases.SQLITE_PREFIX}{os.getpid()}-abc"
    stale.mkdir(), live.mkdir()
    databases.sweep_stale("sqlite")
    assert not stale.exists() and live.exists()


@pytest.mark.skipif(not postgres_answers(), reason="no PostgreSQL on 127.0.0.1:5432")
def test_a_postgresql_database_is_made_and_dropped_even_while_connected():
    import psycopg

    db = databases.create(POSTGRES)
    name = db.url.rsplit("/", 1)[1]
    assert name in databases.grade_databases(POSTGRES)
    held = psycopg.connect(db.url)  # a worker that still holds a connection
    try:
        db.drop()
    finally:
        held.close()
    assert name not in databases.grade_databases(POSTGRES)


def test_an_unusable_database_server_is_one_clear_error():
    with pytest.raises(databases.DatabaseUnavailable, match="cannot create a database"):
        databases.create("postgresql://nobody@127.0.0.1:1/postgres")
    with pytest.raises(databases.DatabaseUnavailable, match="sqlite"):
        databases.create("mysql://x")


def test_a_mutant_folder_is_laid_over_a_copy_of_the_solution(tmp_path):
    lab = labs.find("django")
    mutant = next(p for p in lab.mutants if p.name == "enqueue-on-commit")
    graded = mutation.overlay(lab, mutant, tmp_path / "django")
    assert (graded / "orders" / "services.py").read_text() == (mutant / "orders" / "services.py").read_text()
    assert (graded / "orders" / "tasks.py").read_text() == (lab.solution / "orders" / "tasks.py").read_text()
    assert not (graded / "mutants").exists() and not (graded / "variants").exists()


def test_a_project_lab_names_its_app_package():
    lab = labs.find("django")
    assert (lab.app, lab.app_file, lab.database) == ("proj", "proj/__init__.py", "django")
    assert runtime.module_path(lab.solution, "proj") == lab.solution / "proj" / "__init__.py"
    assert runtime.module_path(lab.solution, "tasks").name == "tasks.py"


def test_the_publish_log_sees_arguments_context_and_holds(ns):
    app = ns.app("publisher")
    held = []
    with PublishLog(context=lambda: "inside", hold=held.append) as log:
        app.send_task("orders.tasks.fulfil_order", args=(7,), kwargs={"note": "x"})
    app.send_task("orders.tasks.fulfil_order", args=(8,))  # after the block: not recorded
    [p] = log.of("fulfil_order")
    assert (p.args, p.kwargs, p.context, p.sent) == ((7,), {"note": "x"}, "inside", True)
    assert held == [p]


def test_a_savepoint_on_the_kits_sqlite_engine_nests_inside_its_transaction(tmp_path, monkeypatch):
    """pysqlite alone would commit a first-statement SAVEPOINT at its RELEASE; the kit's engine does not."""
    from sqlalchemy import text

    monkeypatch.delenv(databases.SQL_ENV, raising=False)
    engine = databases.sql_engine(tmp_path / "t.sqlite3")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE claims (id INTEGER PRIMARY KEY)"))
        with pytest.raises(RuntimeError), engine.begin() as conn:
            with conn.begin_nested():
                conn.execute(text("INSERT INTO claims (id) VALUES (1)"))
            raise RuntimeError("the transaction around the savepoint fails: the claim must go with it")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM claims")).scalar() == 0
    finally:
        engine.dispose()
