"""Inventory: the full device record and the vendor register's risk inputs.

Devices gain ``name``, ``ips`` (every address; ``ip`` stays the primary one), ``serial``,
``criticality`` and ``end_of_support``; ``data_class`` and ``criticality`` are checked against
their vocabularies and the lifecycle gains ``ordered`` while ``provisioning`` becomes
``provisioned`` (existing rows are migrated; a ``data_class`` outside the vocabulary moves to
``attributes['data_class_legacy']`` rather than being lost).  Vendors gain the disclosure
policy, patch cadence, authentication support and support commitment.

SQLite cannot change a CHECK constraint in place, so ``devices`` is copied and moved (batch
mode).  With foreign keys on, dropping the old table would fire ``ON DELETE SET NULL`` on every
finding, incident and action that names a device, so those links are saved first and put back
afterwards.  Like 0001 it does not import the models.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_LIFECYCLES = "lifecycle IN ('provisioning', 'active', 'quarantined', 'retired')"
NEW_LIFECYCLES = "lifecycle IN ('ordered', 'provisioned', 'active', 'quarantined', 'retired')"
DATA_CLASSES = ("public", "internal", "confidential", "regulated")
DATA_CLASS_CHECK = "data_class IN ('public', 'internal', 'confidential', 'regulated')"
CRITICALITY_CHECK = "criticality IN ('low', 'medium', 'high', 'critical')"

_devices = sa.table(
    "devices",
    sa.column("id", sa.Integer),
    sa.column("ip", sa.String),
    sa.column("ips", JSON_TYPE),
    sa.column("data_class", sa.String),
    sa.column("attributes", JSON_TYPE),
    sa.column("lifecycle", sa.String),
)


def upgrade() -> None:
    links = _save_device_links()
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_devices_lifecycle"), type_="check")
        batch_op.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("ips", JSON_TYPE, nullable=True))
        batch_op.add_column(sa.Column("serial", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("criticality", sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column("end_of_support", sa.Date(), nullable=True))
    _migrate_device_rows()
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.alter_column("ips", existing_type=JSON_TYPE, nullable=False)
        batch_op.create_check_constraint(op.f("ck_devices_lifecycle"), NEW_LIFECYCLES)
        batch_op.create_check_constraint(op.f("ck_devices_data_class"), DATA_CLASS_CHECK)
        batch_op.create_check_constraint(op.f("ck_devices_criticality"), CRITICALITY_CHECK)
    _restore_device_links(links)
    _upgrade_vendors()


def _upgrade_vendors() -> None:
    with op.batch_alter_table("vendors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disclosure_policy", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("patch_cadence_days", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("auth_support", JSON_TYPE, nullable=True))
        batch_op.add_column(sa.Column("support_years", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("support_until", sa.Date(), nullable=True))
    vendors = sa.table("vendors", sa.column("auth_support", JSON_TYPE))
    op.get_bind().execute(vendors.update().values(auth_support=[]))
    with op.batch_alter_table("vendors", schema=None) as batch_op:
        batch_op.alter_column("auth_support", existing_type=JSON_TYPE, nullable=False)
        batch_op.create_check_constraint(
            op.f("ck_vendors_patch_cadence"), "patch_cadence_days >= 0 AND patch_cadence_days <= 3650"
        )
        batch_op.create_check_constraint(op.f("ck_vendors_support_years"), "support_years >= 0 AND support_years <= 100")


def _migrate_device_rows() -> None:
    """provisioning -> provisioned; ips from ip; an unknown data_class kept in attributes."""
    conn = op.get_bind()
    conn.execute(_devices.update().where(_devices.c.lifecycle == "provisioning").values(lifecycle="provisioned"))
    rows = conn.execute(sa.select(_devices.c.id, _devices.c.ip, _devices.c.data_class, _devices.c.attributes))
    for row_id, ip, data_class, attributes in list(rows):
        values: dict[str, Any] = {"ips": [ip] if ip else []}
        if data_class is not None:
            cleaned = data_class.strip().lower()
            if cleaned in DATA_CLASSES:
                values["data_class"] = cleaned
            else:
                attrs = attributes if isinstance(attributes, dict) else json.loads(attributes or "{}")
                values["attributes"] = {**attrs, "data_class_legacy": data_class}
                values["data_class"] = None
        conn.execute(_devices.update().where(_devices.c.id == row_id).values(**values))


def _referencing_columns() -> list[tuple[str, str, str]]:
    """(table, primary key column, column) of every foreign key that points at devices.device_id."""
    insp = sa.inspect(op.get_bind())
    found = []
    for table in insp.get_table_names():
        pk = insp.get_pk_constraint(table).get("constrained_columns") or []
        for fk in insp.get_foreign_keys(table):
            if fk.get("referred_table") == "devices" and len(pk) == 1:
                found += [(table, pk[0], col) for col in fk["constrained_columns"]]
    return found


def _save_device_links() -> dict[tuple[str, str, str], list[tuple[Any, Any]]]:
    """SQLite only: the rows that name a device, before the copy-and-move nulls them."""
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return {}
    links = {}
    for table, pk, col in _referencing_columns():
        t = sa.table(table, sa.column(pk), sa.column(col))
        links[(table, pk, col)] = list(conn.execute(sa.select(t.c[pk], t.c[col]).where(t.c[col].is_not(None))))
    return links


def _restore_device_links(links: dict[tuple[str, str, str], list[tuple[Any, Any]]]) -> None:
    conn = op.get_bind()
    for (table, pk, col), rows in links.items():
        t = sa.table(table, sa.column(pk), sa.column(col))
        for key, value in rows:
            conn.execute(t.update().where(t.c[pk] == key).values({col: value}))


def downgrade() -> None:
    links = _save_device_links()
    with op.batch_alter_table("vendors", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_vendors_patch_cadence"), type_="check")
        batch_op.drop_constraint(op.f("ck_vendors_support_years"), type_="check")
        for column in ("support_until", "support_years", "auth_support", "patch_cadence_days", "disclosure_policy"):
            batch_op.drop_column(column)
    with op.batch_alter_table("devices", schema=None) as batch_op:
        for name in ("criticality", "data_class", "lifecycle"):
            batch_op.drop_constraint(op.f(f"ck_devices_{name}"), type_="check")
        for column in ("end_of_support", "criticality", "serial", "ips", "name"):
            batch_op.drop_column(column)
    conn = op.get_bind()
    conn.execute(
        _devices.update().where(_devices.c.lifecycle.in_(["ordered", "provisioned"])).values(lifecycle="provisioning")
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_check_constraint(op.f("ck_devices_lifecycle"), OLD_LIFECYCLES)
    _restore_device_links(links)
