"""DATABASE_URL: whether Parley can use it, and how to show it without its password."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InvalidRequestError, NoSuchModuleError


def usable_database_url(url: str, home: Path) -> str:
    """`url` with a relative SQLite path made absolute under `home`; ValueError when it cannot work."""
    from sqlalchemy.ext.asyncio import create_async_engine  # SQLAlchemy's asyncio layer, only to check

    try:
        parsed = make_url(url)
        create_async_engine(parsed)  # loads the dialect and imports its driver; connects to nothing
    except NoSuchModuleError:
        raise ValueError(_unknown_database(url)) from None
    except ArgumentError:
        raise ValueError(
            "is not a database URL; write it like sqlite+aiosqlite:///data/parley.db "
            "or postgresql+asyncpg://USER:PASSWORD@HOST/DB"
        ) from None
    except InvalidRequestError:  # a synchronous driver
        raise ValueError(
            f"uses the synchronous {parsed.get_driver_name()} driver; Parley needs an asynchronous one: "
            f"{_async_variant(parsed)}"
        ) from None
    except ImportError as error:
        raise ValueError(_missing_driver(parsed, error.name or parsed.get_driver_name())) from None
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        path = Path(database).expanduser()
        if not database.startswith("file:") and not path.is_absolute():
            return parsed.set(database=str(home / path)).render_as_string(hide_password=False)
    return url


def describe_database(url: str) -> str:
    """Where memory lives, for logs and `parley check`: a file path, or the URL without its password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        in_memory = parsed.database in (None, "", ":memory:")
        return "SQLite in memory (forgotten at exit)" if in_memory else f"SQLite file {parsed.database}"
    return parsed.render_as_string(hide_password=True)


def _async_variant(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=True)
    if url.get_backend_name() == "postgresql":
        async_url = url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=True)
        return f"{async_url} (after pip install -e '.[postgres]')"
    return "see SQLAlchemy's list of asyncio dialects"


def _unknown_database(url: str) -> str:
    scheme = url.partition(":")[0]
    if scheme == "postgres":
        return "starts with postgres://, which SQLAlchemy does not know; write postgresql+asyncpg://"
    return (
        f"names {scheme}, a database SQLAlchemy does not know; "
        "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST/DB"
    )


def _missing_driver(url: URL, module: str) -> str:
    if url.get_backend_name() == "postgresql":
        if module == "asyncpg":
            return "needs the asyncpg driver, which is not installed: pip install -e '.[postgres]'"
        return (
            f"uses the {module} driver, which is not installed; Parley's PostgreSQL driver is asyncpg: "
            "pip install -e '.[postgres]' and write postgresql+asyncpg://"
        )
    return f"needs the {module} driver, which is not installed: pip install {module}"
