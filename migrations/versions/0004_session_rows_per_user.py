"""session rows per user: key session_usage by session id and user id

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 17:05:00.000000

Keyed by the session id alone, the records of two users that share a session id
(the same transcript imported for both) would add up in one row.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("session_usage", schema=None) as batch_op:
        batch_op.drop_constraint("pk_session_usage", type_="primary")
        batch_op.create_primary_key("pk_session_usage", ["session_id", "user_id"])


def downgrade():
    with op.batch_alter_table("session_usage", schema=None) as batch_op:
        batch_op.drop_constraint("pk_session_usage", type_="primary")
        batch_op.create_primary_key("pk_session_usage", ["session_id"])
