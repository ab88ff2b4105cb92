"""What the two HTTP providers share: their settings, their HTTP clients, and JSON GETs that fail clearly."""

from __future__ import annotations

from typing import Any

import httpx

from bot.config import ProviderSettings
from bot.providers.base import ErrorKind, ProviderError, Timeouts
from bot.providers.clients import Clients
from bot.providers.http_errors import error_from_response, error_from_transport, public_url


class HTTPProvider:
    def __init__(
        self,
        name: str,
        settings: ProviderSettings,
        timeouts: Timeouts,
    ) -> None:
        self.name = name
        self._settings = settings
        self._timeouts = timeouts
        self._base = settings.base_url.rstrip("/")
        self._clients = Clients(timeouts)

    def __repr__(self) -> str:  # the base URL, never the key
        return f"{type(self).__name__}({self.name!r}, {self._base!r})"

    async def aclose(self) -> None:
        await self._clients.aclose()

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET a JSON document; a connection failure or error status becomes a ProviderError."""
        try:
            response = await self._clients.first.get(
                f"{self._base}{path}", headers=self._headers(), params=params, timeout=30.0
            )
        except httpx.TransportError as error:
            raise error_from_transport(self.name, "", self._base, error) from None
        if response.status_code >= 400:
            raise error_from_response(
                self.name,
                "",
                response.status_code,
                response.content,
                response.headers,
                self._settings.key(),
                self._base,
            )
        try:
            return response.json()
        except ValueError:  # a web page where the API should be
            raise ProviderError(
                ErrorKind.NO_API,
                provider=self.name,
                status=response.status_code,
                detail=f"HTTP {response.status_code}, and not JSON",
                url=public_url(self._base),
            ) from None
