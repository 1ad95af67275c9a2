"""Alembic's environment: migrate the connection ``Database.upgrade()`` hands over.

Run from Alembic's own command line instead, it opens ``sqlalchemy.url`` from the config.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from proxy.storage.database import Base


def _migrate(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters by copying
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _migrate(connection)
else:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.begin() as connection:
        _migrate(connection)
    engine.dispose()
