"""The migrations: ``Database.upgrade()`` builds exactly the models' schema, on SQLite and
PostgreSQL, and several processes starting at once upgrade it once, without errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from proxy.config import config_from_dict
from proxy.storage.database import Base, Database, Package, open_database
from support.wharf_serve import wharf_env


def _diff(database: Database) -> list:
    with database.engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def test_the_migrated_schema_is_the_models(database_url):
    database = Database(database_url)
    try:
        database.upgrade()
        assert _diff(database) == []
        tables = set(inspect(database.engine).get_table_names())
        assert set(Base.metadata.tables) | {"alembic_version"} == tables
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
    finally:
        database.close()


def test_a_database_without_migrations_differs(database_url):
    """The comparison can fail: an empty database is missing every table."""
    database = Database(database_url)
    try:
        assert len(_diff(database)) >= len(Base.metadata.tables)
    finally:
        database.close()


def test_one_live_package_per_repository_deleted_ones_beside_it(database_url):
    """The partial unique index: a name is reused after a delete, never twice live."""
    database = Database(database_url)
    try:
        database.upgrade()
        row = dict(namespace="alice", name="app", repository="alice/app", visibility="private",
                   created_at=1.0, updated_at=1.0, truncated="")
        with database.session() as session:
            session.add(Package(**row, deleted_at=5.0))
            session.add(Package(**row))
        with pytest.raises(IntegrityError):
            with database.session() as session:
                session.add(Package(**row))
    finally:
        database.close()


def test_upgrading_again_changes_nothing(database_url):
    database = Database(database_url)
    try:
        database.upgrade()
        database.upgrade()
        assert _diff(database) == []
    finally:
        database.close()


def test_open_database_upgrades_the_store_database(tmp_path):
    config = config_from_dict({"storage": {"root": str(tmp_path / "store")}})
    (tmp_path / "store").mkdir()
    database = open_database(config)
    try:
        assert database.url.endswith(str(tmp_path / "store" / "wharf.db"))
        assert _diff(database) == []
    finally:
        database.close()


_UPGRADE = """
import sys
from proxy.storage.database import Database
database = Database(sys.argv[1])
database.upgrade()
database.close()
print("upgraded")
"""


def test_processes_starting_at_once_upgrade_once(database_url):
    """Six processes upgrade one empty database together: each succeeds, the schema is whole."""
    processes = [subprocess.Popen([sys.executable, "-c", _UPGRADE, database_url], env=wharf_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
    results = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, [err for _, err in results]
    assert all(out.strip() == "upgraded" for out, _ in results)
    database = Database(database_url)
    try:
        assert _diff(database) == []
    finally:
        database.close()
