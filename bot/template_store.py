"""The prompt templates and personas a server or workspace saved, as plain functions of a connection
that the store runs in one transaction (`store.write`) or reads (`store.read`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, Table, delete, insert, select, update

from bot.schema import personas, prompt_templates


@dataclass(frozen=True, slots=True)
class Saved:
    """Who saved a template or persona: they, or a manager, may replace or delete it."""

    name: str
    created_by: str
    created_by_name: str


@dataclass(frozen=True, slots=True)
class SavedTemplate(Saved):
    body: str


@dataclass(frozen=True, slots=True)
class SavedPersona(Saved):
    model: str
    system_prompt: str | None
    skills: Mapping[str, str]


def template(scope: str, name: str) -> Callable[[Connection], SavedTemplate | None]:
    def work(conn: Connection) -> SavedTemplate | None:
        row = conn.execute(select(prompt_templates).where(*_key(prompt_templates, scope, name))).first()
        return SavedTemplate(row.name, row.created_by, row.created_by_name, row.body) if row else None

    return work


def save_template(
    scope: str, name: str, body: str, author: tuple[str, str], now: float
) -> Callable[[Connection], bool]:
    """Save or replace; returns whether it replaced one (which keeps who saved it first)."""
    return _save(prompt_templates, scope, name, {"body": body}, author, now)


def persona(scope: str, name: str) -> Callable[[Connection], SavedPersona | None]:
    def work(conn: Connection) -> SavedPersona | None:
        row = conn.execute(select(personas).where(*_key(personas, scope, name))).first()
        if row is None:
            return None
        skills = json.loads(row.skills)
        return SavedPersona(
            row.name, row.created_by, row.created_by_name, row.model, row.system_prompt, skills
        )

    return work


def save_persona(
    scope: str,
    name: str,
    settings: tuple[str, str | None, Mapping[str, str]],
    author: tuple[str, str],
    now: float,
) -> Callable[[Connection], bool]:
    model, system_prompt, skills = settings
    values = {
        "model": model,
        "system_prompt": system_prompt,
        "skills": json.dumps(dict(skills), sort_keys=True),
    }
    return _save(personas, scope, name, values, author, now)


def names(table: Table, scope: str, prefix: str = "") -> Callable[[Connection], list[str]]:
    """The names saved in a scope, sorted; only those starting with `prefix` when given."""

    def work(conn: Connection) -> list[str]:
        query = select(table.c.name).where(table.c.scope == scope).order_by(table.c.name)
        if prefix:
            query = query.where(table.c.name.startswith(prefix, autoescape=True))
        return list(conn.execute(query).scalars())

    return work


def remove(table: Table, scope: str, name: str) -> Callable[[Connection], bool]:
    def work(conn: Connection) -> bool:
        return conn.execute(delete(table).where(*_key(table, scope, name))).rowcount > 0

    return work


def _save(
    table: Table, scope: str, name: str, values: dict[str, object], author: tuple[str, str], now: float
) -> Callable[[Connection], bool]:
    def work(conn: Connection) -> bool:
        changed = conn.execute(
            update(table).where(*_key(table, scope, name)).values(**values, updated_at=now)
        )
        if changed.rowcount:
            return True
        author_id, author_name = author
        row = {"scope": scope, "name": name, "created_by": author_id, "created_by_name": author_name}
        conn.execute(insert(table).values(**row, **values, updated_at=now))
        return False

    return work


def _key(table: Table, scope: str, name: str) -> tuple[object, object]:
    return table.c.scope == scope, table.c.name == name
