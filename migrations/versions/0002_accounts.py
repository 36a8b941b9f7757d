"""accounts: passwords, single sign-on subjects, budgets, roles and revoked tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 16:10:10.101894
"""

import sqlalchemy as sa
from alembic import op

import app.db
import app.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", app.models.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", app.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_revoked_tokens_user_id_users")
        ),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_revoked_tokens")),
    )
    with op.batch_alter_table("revoked_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_revoked_tokens_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_revoked_tokens_user_id"), ["user_id"], unique=False
        )

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("password_hash", sa.String(length=255), nullable=True)
        )
        batch_op.add_column(
            sa.Column("external_subject", sa.String(length=255), nullable=True)
        )
        batch_op.add_column(sa.Column("daily_budget", app.db.Money(), nullable=True))
        batch_op.add_column(sa.Column("monthly_budget", app.db.Money(), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_users_external_subject"), ["external_subject"]
        )
        batch_op.create_check_constraint("role", "role IN ('user', 'admin')")
        batch_op.create_check_constraint(
            "daily_budget_not_negative", "daily_budget >= 0"
        )
        batch_op.create_check_constraint(
            "monthly_budget_not_negative", "monthly_budget >= 0"
        )


def downgrade():
    with op.batch_alter_table("users", schema=None) as batch_op:
        for name in ("monthly_budget_not_negative", "daily_budget_not_negative"):
            batch_op.drop_constraint(batch_op.f(f"ck_users_{name}"), type_="check")
        batch_op.drop_constraint(batch_op.f("ck_users_role"), type_="check")
        batch_op.drop_constraint(
            batch_op.f("uq_users_external_subject"), type_="unique"
        )
        batch_op.drop_column("monthly_budget")
        batch_op.drop_column("daily_budget")
        batch_op.drop_column("external_subject")
        batch_op.drop_column("password_hash")

    with op.batch_alter_table("revoked_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_revoked_tokens_user_id"))
        batch_op.drop_index(batch_op.f("ix_revoked_tokens_expires_at"))

    op.drop_table("revoked_tokens")
