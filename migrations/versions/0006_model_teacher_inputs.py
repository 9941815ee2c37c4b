"""What an uploaded teacher expects: its output order (class_names) and its input normalisation.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("class_names", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("normalize", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("normalize")
        batch.drop_column("class_names")
