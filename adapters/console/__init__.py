"""The terminal adapter behind `parley chat`."""

from adapters.console.session import Chat

__all__ = ["Chat"]
