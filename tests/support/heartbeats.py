"""Making an instance look dead to the others, as when its process was killed."""

from __future__ import annotations

from sqlalchemy import text

from bot.engine import Engine


async def silence(engine: Engine, seconds: float) -> None:
    """The instance's heartbeat stopped `seconds` ago, as when its process was killed."""
    statement = text("UPDATE instances SET heartbeat_at = heartbeat_at - :s WHERE id = :id")
    values = {"s": seconds, "id": engine.store.instance_id}
    await engine.store.write(lambda conn: conn.execute(statement, values))
