"""Privileges for app_user and readonly.

app_user may read and write what the worker needs, never DELETE or DDL; readonly may read every
table, including tables app_admin adds later.

Role names come from the settings (PG_USER, PG_ADMIN_USER); `readonly` is fixed. The roles are
cluster-wide and created by `crm-db bootstrap`, not here.

Revision ID: 002_policies
Revises: 001_schema
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import text

from common.settings import Settings

revision: str = "002_policies"
down_revision: str | None = "001_schema"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READONLY_ROLE = "readonly"

APP_USER_GRANTS: dict[str, str] = {
    "contacts": "SELECT, INSERT, UPDATE",
    "companies": "SELECT, INSERT, UPDATE",
    "activities": "SELECT, INSERT",
    "deals": "SELECT, INSERT, UPDATE",
    "pipelines": "SELECT",
    "pipeline_stages": "SELECT",
    "owners": "SELECT",
    "webhook_events": "SELECT, INSERT, UPDATE",
    "dead_letters": "SELECT, INSERT, UPDATE",
}


def _roles() -> tuple[str, str]:
    settings = context.config.attributes["settings"]
    assert isinstance(settings, Settings)
    return settings.pg_user, settings.pg_admin_user


def _quote(name: str) -> str:
    return op.get_bind().dialect.identifier_preparer.quote(name)


def _missing(roles: Sequence[str]) -> list[str]:
    found = op.get_bind().execute(
        text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)"), {"names": list(roles)}
    )
    present = {row[0] for row in found}
    return [role for role in roles if role not in present]


def upgrade() -> None:
    app_user, app_admin = _roles()
    missing = _missing([app_user, app_admin, READONLY_ROLE])
    if missing:
        raise RuntimeError(
            f"PostgreSQL role(s) {', '.join(missing)} missing: run `crm-db bootstrap` first"
        )
    user, admin, readonly = _quote(app_user), _quote(app_admin), _quote(READONLY_ROLE)

    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(f"REVOKE CREATE ON SCHEMA public FROM {user}, {readonly}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {user}, {readonly}")

    # Start from nothing, so a grant left by the prototype (or by hand) cannot survive.
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {user}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {user}")
    for table, privileges in APP_USER_GRANTS.items():
        op.execute(f"GRANT {privileges} ON {table} TO {user}")
    # The bigserial default calls nextval(), which needs USAGE on the sequence.
    sequence = op.get_bind().scalar(text("SELECT pg_get_serial_sequence('dead_letters', 'id')"))
    op.execute(f"GRANT USAGE ON SEQUENCE {sequence} TO {user}")

    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {readonly}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA public "
        f"GRANT SELECT ON TABLES TO {readonly}"
    )


def downgrade() -> None:
    app_user, app_admin = _roles()
    absent = set(_missing([app_user, app_admin, READONLY_ROLE]))
    # CREATE on public stays revoked from PUBLIC: PostgreSQL 15 ships it that way, and undoing
    # a hardening is not what a downgrade is for.
    if app_user not in absent:
        user = _quote(app_user)
        op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {user}")
        op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {user}")
        op.execute(f"REVOKE USAGE ON SCHEMA public FROM {user}")
    if READONLY_ROLE not in absent:
        readonly = _quote(READONLY_ROLE)
        if app_admin not in absent:
            op.execute(
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {_quote(app_admin)} IN SCHEMA public "  # noqa: S608
                f"REVOKE SELECT ON TABLES FROM {readonly}"
            )
        op.execute(f"REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM {readonly}")  # noqa: S608
        op.execute(f"REVOKE USAGE ON SCHEMA public FROM {readonly}")
