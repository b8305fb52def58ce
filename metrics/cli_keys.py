"""``metrics keys create|list|revoke``: manage the HTTP API's keys (every action goes to the audit log).

Whoever can run these commands on the data directory administers the API:
they act directly on ``data/state/keys.sqlite``, with no credentials of
their own, and are audited as ``cli:<user>``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from metrics.errors import MetricsError, ValidationError
from metrics.settings import Settings

keys_app = typer.Typer(
    help="Manage API keys: create (shown once), list, revoke. Every action is written to the audit log.\n\n"
    "Example: metrics keys create --role writer --name ingest-bot",
    no_args_is_help=True,
)

out = Console(soft_wrap=True)


class RoleChoice(StrEnum):
    """The roles a key can have (``metrics.api.auth.Role``; repeated here to keep the CLI's start fast)."""

    READER = "reader"
    WRITER = "writer"
    ADMIN = "admin"


def _settings() -> Settings:
    from metrics.cli import settings  # the root command's --data-dir (imported late: metrics.cli imports us)

    return settings()


@keys_app.command("create")
def create(
    role: Annotated[RoleChoice, typer.Option("--role", help="reader (queries), writer (ingest) or admin (all).")],
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key, e.g. ingest-bot.")],
) -> None:
    """Create a key and print it alone on the last line; it is shown this once and stored only hashed.

    Example: metrics keys create --role admin --name ops
    """
    from metrics.api.audit import audit_admin
    from metrics.api.keys import create_key

    settings = _settings()
    try:
        key_id, token = create_key(settings, name, role.value)
    except MetricsError as exc:
        audit_admin(settings, "keys.create", "error", {"name": name, "role": role.value, "reason": str(exc)})
        raise
    audit_admin(settings, "keys.create", "ok", {"key_id": key_id, "name": name.strip(), "role": role.value})
    out.print(f"Created {role.value} key {key_id} for {name.strip()!r}. Store it now: it is not shown again.")
    print(token)


@keys_app.command("list")
def list_(
    fmt: Annotated[str, typer.Option("--format", "-f", help="Output format: table or json.")] = "table",
) -> None:
    """List keys: id, name, role, created, last used, revoked (never the secrets).

    Example: metrics keys list --format json
    """
    from metrics.api.keys import list_keys

    keys = list_keys(_settings())
    if fmt == "json":
        print(json.dumps([key.to_dict() for key in keys]))
        return
    if fmt != "table":
        raise ValidationError(f"--format: {fmt!r} is not one of table, json")
    table = Table(header_style="bold")
    for column in ("id", "name", "role", "created", "last used", "revoked"):
        table.add_column(column)
    for key in keys:
        table.add_row(
            key.key_id,
            key.name,
            key.role.value,
            f"{key.created_at:%Y-%m-%d %H:%M:%S}Z",
            f"{key.last_used_at:%Y-%m-%d %H:%M:%S}Z" if key.last_used_at else "never",
            f"{key.revoked_at:%Y-%m-%d %H:%M:%S}Z" if key.revoked_at else "",
        )
    out.print(table)
    out.print(f"{len(keys)} keys")


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (see `metrics keys list`).")]) -> None:
    """Revoke a key: it stops working at once, in every API process.

    Example: metrics keys revoke 3f2a9c01d4e5
    """
    from metrics.api.audit import audit_admin
    from metrics.api.keys import revoke_key

    settings = _settings()
    try:
        key = revoke_key(settings, key_id)
    except MetricsError as exc:
        audit_admin(settings, "keys.revoke", "error", {"key_id": key_id, "reason": str(exc)})
        raise
    audit_admin(settings, "keys.revoke", "ok", {"key_id": key.key_id, "name": key.name, "role": key.role.value})
    out.print(f"Revoked key {key.key_id} ({key.name}, {key.role.value}).")
