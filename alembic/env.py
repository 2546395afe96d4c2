"""Runs the revisions online against one connection, one transaction per revision.

The URL comes from the caller (`crm-db` sets config.attributes["url"]), else from
sqlalchemy.url in alembic.ini, else from the environment via common.settings. The revisions
read role names and APP_ENV from config.attributes["settings"], filled here when the caller
did not pass one, so a test can migrate a scratch database without touching os.environ.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from common.settings import Settings, load_settings

config = context.config

# Called from crm-db or the tests, logging is the caller's business: fileConfig would disable
# every logger created before it.
if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _settings() -> Settings:
    settings = config.attributes.get("settings")
    if not isinstance(settings, Settings):
        settings = load_settings()
        config.attributes["settings"] = settings
    return settings


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    return str(url) if url else _settings().pg_url(admin=True)


def run_migrations_online() -> None:
    _settings()
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, transaction_per_migration=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("crm-db: offline (--sql) migrations are not supported; run them online")
run_migrations_online()
