"""Alembic migrations of the accounts and packages schema (``proxy.storage.database``).

``Database.upgrade()`` runs them at start. A schema change is a new revision in ``versions/``:
edit the models, then write the revision by hand or draft it with autogenerate, e.g.
``alembic -x url=sqlite:///draft.db -c /dev/null ...`` is not needed — from Python::

    from alembic.config import Config; from alembic import command
    cfg = Config(); cfg.set_main_option("script_location", "proxy.storage:migrations")
    cfg.set_main_option("sqlalchemy.url", "sqlite:///draft.db")  # a database at the current head
    command.revision(cfg, "what changed", autogenerate=True)

and check it on both SQLite and PostgreSQL (tests/test_accounts_schema.py).
"""
