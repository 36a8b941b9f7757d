"""report indexes: one user's ledger records by time

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 17:30:00.000000

Without it, every report that reads one user's ledger records (the sessions and
models reports, the API in a time zone other than UTC) scans the whole ledger:
about 1 s at 10 million records. `python -m bench --only reports` shows the plans.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_records_user_id_occurred_at",
            ["user_id", "occurred_at"],
            unique=False,
        )


def downgrade():
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_user_id_occurred_at")
