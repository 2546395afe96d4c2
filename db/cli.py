"""`crm-db`: create the roles and the database, and run the Alembic migrations.

crm-db bootstrap              roles app_admin, app_user, readonly and the database, if missing
crm-db migrate [--revision R] upgrade (default: head) as app_admin
crm-db downgrade R            downgrade to revision R (`base` drops every table)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import URL, Connection, create_engine, pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from common.settings import Settings, SettingsError, load_settings
from db.engine import server_reason

REPO_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = REPO_ROOT / "alembic.ini"
READONLY_ROLE = "readonly"

START_HINT = (
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "or `docker compose up -d postgres redis`"
)
# libpq's wording when nothing answers at host:port, as opposed to a refused login.
_UNREACHABLE = (
    "connection refused",
    "timeout expired",
    "could not translate host name",
    "no route to host",
    "network is unreachable",
    "is the server running",
)

Echo = Callable[[str], None]


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL did not answer, or refused the connection. The message holds no secret."""


def alembic_config(settings: Settings, *, url: str | None = None) -> Config:
    """An Alembic config that works from any directory, migrating as app_admin by default."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(REPO_ROOT / "alembic"))
    # The URL travels as an attribute: in the ini it would be interpolated and could be logged.
    config.attributes["url"] = url or settings.pg_url(admin=True)
    config.attributes["settings"] = settings
    config.attributes["skip_logging_config"] = True
    return config


def superuser_url(settings: Settings, *, database: str | None = None) -> URL:
    """PG_SUPERUSER_URL as a SQLAlchemy URL, optionally pointed at another database."""
    url = make_url(settings.pg_superuser_url.get())
    return url if database is None else url.set(database=database)


# What to check when a connection fails, by who connects.
_SUPERUSER_VARIABLES = "PG_SUPERUSER_URL, or PG_HOST / PG_PORT when it is unset"
_ADMIN_VARIABLES = "PG_HOST, PG_PORT, PG_ADMIN_USER, PG_ADMIN_PASSWORD"


class DatabaseMissing(RuntimeError):
    """PG_DATABASE names a database that does not exist, and nothing said to create it."""


def may_create_database(settings: Settings) -> bool:
    """Whether bootstrap creates a missing database unasked: only the development default.
    Anything else missing is more likely a typo (PG_DATABASE=crn) than a wish, and webhooks
    would land in an empty CRM nobody looks at."""
    return settings.app_env == "development" and settings.pg_database == Settings().pg_database


def bootstrap(
    settings: Settings, *, echo: Echo = print, create_database: bool | None = None
) -> None:
    """Create the three LOGIN roles and, when `create_database` (default: may_create_database)
    allows, the database if missing; app_admin owns schema public. DatabaseMissing otherwise."""
    if create_database is None:
        create_database = may_create_database(settings)
    server = superuser_url(settings)
    where = f"{server.host or 'localhost'}:{server.port or 5432}"
    echo(f"bootstrap: as {server.username or '?'} on {where} (PG_SUPERUSER_URL)")
    roles = (
        (settings.pg_admin_user, settings.pg_admin_password.get()),
        (settings.pg_user, settings.pg_password.get()),
        (READONLY_ROLE, settings.pg_readonly_password.get()),
    )
    with _autocommit(server, where) as conn:
        for role, password in roles:
            _ensure_role(conn, role, password, echo)
        _ensure_database(
            conn, settings.pg_database, settings.pg_admin_user, echo, create=create_database
        )
    with _autocommit(server.set(database=settings.pg_database), where) as conn:
        conn.execute(text(f"ALTER SCHEMA public OWNER TO {_quote(conn, settings.pg_admin_user)}"))
        echo(f"schema public in {settings.pg_database}: owned by {settings.pg_admin_user}")


def migrate(settings: Settings, revision: str = "head") -> None:
    _run_alembic(settings, command.upgrade, revision)


def current_revision(settings: Settings) -> str | None:
    """The revision the database is at; None before the first migration."""
    where = f"{settings.pg_host}:{settings.pg_port}"
    engine = create_engine(settings.pg_url(admin=True), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise DatabaseUnavailable(
            _describe(exc, where, settings.pg_admin_user, _ADMIN_VARIABLES)
        ) from None
    finally:
        engine.dispose()


def downgrade(settings: Settings, revision: str) -> None:
    _run_alembic(settings, command.downgrade, revision)


def _run_alembic(settings: Settings, step: Callable[[Config, str], None], revision: str) -> None:
    try:
        step(alembic_config(settings), revision)
    except OperationalError as exc:
        if not _is_connect_error(exc):
            raise
        where = f"{settings.pg_host}:{settings.pg_port}"
        raise DatabaseUnavailable(
            _describe(exc, where, settings.pg_admin_user, _ADMIN_VARIABLES)
        ) from None


@contextmanager
def _autocommit(url: URL, where: str) -> Iterator[Connection]:
    """One AUTOCOMMIT connection (CREATE DATABASE refuses to run in a transaction)."""
    # hide_parameters: a failing CREATE ROLE must not print the password in its error.
    engine = create_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool, hide_parameters=True
    )
    try:
        try:
            conn = engine.connect()
        except OperationalError as exc:
            raise DatabaseUnavailable(
                _describe(exc, where, url.username or "?", _SUPERUSER_VARIABLES)
            ) from None
        with conn:
            yield conn
    finally:
        engine.dispose()


def _is_connect_error(exc: OperationalError) -> bool:
    detail = str(exc.orig)
    return detail.startswith(("connection to server", "could not connect to server"))


def _describe(exc: OperationalError, where: str, user: str, variables: str) -> str:
    detail = str(exc.orig).strip()
    if any(marker in detail.lower() for marker in _UNREACHABLE):
        return f"PostgreSQL is not answering at {where} (check {variables}); {START_HINT}"
    reason = server_reason(exc)
    return (
        f"PostgreSQL at {where} refused the connection as {user}: {reason} "
        f"(check {variables}; run `crm-db bootstrap` if the role or database is missing)"
    )


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _ensure_role(conn: Connection, role: str, password: str, echo: Echo) -> None:
    exists = conn.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role})
    if exists:
        echo(f"role {role}: kept (already exists)")
        return
    # psycopg2 binds parameters client-side, so a DDL statement can take the password as one.
    conn.execute(text(f"CREATE ROLE {_quote(conn, role)} LOGIN PASSWORD :pw"), {"pw": password})
    echo(f"role {role}: created")


def _ensure_database(
    conn: Connection, database: str, owner: str, echo: Echo, *, create: bool
) -> None:
    exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :db"), {"db": database})
    if exists:
        echo(f"database {database}: kept (already exists)")
        return
    if not create:
        raise DatabaseMissing(
            f"database '{database}' does not exist (PG_DATABASE). If that name is right, create"
            " it on purpose: crm-db bootstrap --create-database"
        )
    conn.execute(text(f"CREATE DATABASE {_quote(conn, database)} OWNER {_quote(conn, owner)}"))
    echo(f"database {database}: created, owned by {owner}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm-db", description="Create the CRM database and roles, and run its migrations."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    boot = sub.add_parser(
        "bootstrap",
        help="create roles app_admin, app_user, readonly and the database if missing "
        "(needs PG_SUPERUSER_URL)",
    )
    boot.add_argument(
        "--create-database",
        action="store_true",
        help="create PG_DATABASE if it does not exist (unasked, only the development default "
        "'crm' is created: any other missing name is refused as a likely typo)",
    )
    up = sub.add_parser("migrate", help="upgrade the schema as app_admin")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    down = sub.add_parser("downgrade", help="downgrade the schema as app_admin")
    down.add_argument("revision", help="target revision, e.g. 002_policies or base")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = load_settings()
        if args.command == "bootstrap":
            bootstrap(settings, create_database=args.create_database or None)
        elif args.command == "migrate":
            before = current_revision(settings)
            migrate(settings, args.revision)
            after = current_revision(settings)
            if before == after:
                print(f"crm-db: already at {after or 'base'}; nothing to do")
            else:
                print(f"crm-db: migrated from {before or 'an empty database'} to {after}")
        else:
            downgrade(settings, args.revision)
    except SettingsError as exc:
        print(f"crm-db: {exc}", file=sys.stderr)
        return 2
    except (DatabaseUnavailable, DatabaseMissing, CommandError, RuntimeError) as exc:
        print(f"crm-db: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
