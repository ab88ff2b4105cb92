"""Who Parley is in the workspace it is installed in (auth.test), and links to its messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Workspace:
    team_id: str
    url: str  # https://NAME.slack.com/
    bot_user_id: str
    bot_id: str

    @classmethod
    def from_auth_test(cls, answer: Any) -> Workspace:
        url = str(answer.get("url") or "")
        return cls(
            team_id=str(answer.get("team_id") or ""),
            url=url if url.endswith("/") else url + "/",
            bot_user_id=str(answer.get("user_id") or ""),
            bot_id=str(answer.get("bot_id") or ""),
        )

    def is_parley(self, message: dict[str, Any]) -> bool:
        return bool(
            (message.get("user") and message.get("user") == self.bot_user_id)
            or (message.get("bot_id") and message.get("bot_id") == self.bot_id)
        )

    def permalink(self, channel: str, ts: str, thread_ts: str | None = None) -> str:
        """The link Slack's chat.getPermalink gives, without asking for it: a reply's names its thread."""
        link = f"{self.url}archives/{channel}/p{ts.replace('.', '')}"
        if thread_ts and thread_ts != ts:
            link += f"?thread_ts={thread_ts}&cid={channel}"
        return link
