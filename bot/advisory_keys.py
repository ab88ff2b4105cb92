"""The key of a PostgreSQL advisory lock that Parley names in words (a conversation's turn, a budget's
holds): a lock's key is a 64-bit integer, so every such name is hashed into one the same way."""

from __future__ import annotations

import hashlib


def advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
