"""Turn changes: per conversation, how many turns were ever inserted and how many times memory changed
under them, counted by triggers so every writer (any instance, any code path) is counted.

A reply's in-memory window (bot/windows.py) reads these two numbers to tell an append, which it reads
alone, from an edit, a hidden exchange or a deletion, after which it reads the window again. A reply's own
row is not counted while it streams (its checkpoints) or when it finishes: the window reads again the rows
it saw streaming.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TRIGGERS = ("turns_inserted", "turns_updated", "turns_deleted")

# An update changes memory when it hides or shows a turn, or changes what a finished turn says or answers;
# a streaming row's checkpoints and its finish are not counted (the window reads such rows again itself).
_SQLITE_CHANGED = """
old.hidden IS NOT new.hidden OR old.conversation IS NOT new.conversation
OR (old.outcome IS NOT 'streaming' AND (
    old.content IS NOT new.content OR old.tokens IS NOT new.tokens OR old.outcome IS NOT new.outcome
    OR old.answers IS NOT new.answers OR old.role IS NOT new.role OR old.author_name IS NOT new.author_name
))
"""


def _sqlite_bump(conversation: str, column: str) -> str:
    return (
        f"INSERT INTO turn_changes (conversation, {column}) VALUES ({conversation}, 1) "
        f"ON CONFLICT (conversation) DO UPDATE SET {column} = {column} + 1;"
    )


_SQLITE = (
    f"CREATE TRIGGER turns_inserted AFTER INSERT ON turns BEGIN "
    f"{_sqlite_bump('new.conversation', 'inserted')} END",
    f"CREATE TRIGGER turns_updated AFTER UPDATE ON turns WHEN {_SQLITE_CHANGED} BEGIN "
    f"{_sqlite_bump('old.conversation', 'changed')} END",
    f"CREATE TRIGGER turns_deleted AFTER DELETE ON turns BEGIN "
    f"{_sqlite_bump('old.conversation', 'changed')} END",
)


def _postgres_function(name: str, column: str, rows: str) -> str:
    """A statement-level trigger's function: one upsert per conversation, however many rows changed."""
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO turn_changes AS c (conversation, inserted, changed)
    SELECT conversation, {"count(*), 0" if column == "inserted" else "0, count(*)"} FROM {rows}
    GROUP BY conversation
    ON CONFLICT (conversation) DO UPDATE SET {column} = c.{column} + EXCLUDED.{column};
    RETURN NULL;
END $$
"""


_POSTGRES_CHANGED_ROWS = """(
    SELECT o.conversation FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE o.hidden IS DISTINCT FROM n.hidden OR o.conversation IS DISTINCT FROM n.conversation
    OR (o.outcome IS DISTINCT FROM 'streaming'
        AND (o.content, o.tokens, o.outcome, o.answers, o.role, o.author_name)
        IS DISTINCT FROM (n.content, n.tokens, n.outcome, n.answers, n.role, n.author_name))
) AS changed_rows"""

_POSTGRES = (
    _postgres_function("turns_inserted", "inserted", "new_rows"),
    _postgres_function("turns_updated", "changed", _POSTGRES_CHANGED_ROWS),
    _postgres_function("turns_deleted", "changed", "old_rows"),
    "CREATE TRIGGER turns_inserted AFTER INSERT ON turns REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION turns_inserted()",
    "CREATE TRIGGER turns_updated AFTER UPDATE ON turns REFERENCING OLD TABLE AS old_rows "
    "NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION turns_updated()",
    "CREATE TRIGGER turns_deleted AFTER DELETE ON turns REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION turns_deleted()",
)


def upgrade() -> None:
    op.create_table(
        "turn_changes",
        sa.Column("conversation", sa.String(255), primary_key=True),
        sa.Column("inserted", sa.Integer, nullable=False, server_default="0"),
        sa.Column("changed", sa.Integer, nullable=False, server_default="0"),
    )
    # Conversations stored before this revision start from their turns as they are.
    op.execute(
        "INSERT INTO turn_changes (conversation, inserted, changed) "
        "SELECT conversation, count(*), 0 FROM turns GROUP BY conversation"
    )
    for statement in _POSTGRES if op.get_bind().dialect.name == "postgresql" else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON turns" if postgres else f"DROP TRIGGER {name}")
        if postgres:
            op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("turn_changes")
