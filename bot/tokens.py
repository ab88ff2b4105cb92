"""Offline token estimates, corrected per model by the usage figures providers report.

Exact tokenizers need tables downloaded at run time (tiktoken) and differ per model anyway, so the
engine estimates and learns a per-model correction factor from each reply's reported prompt tokens.
"""

from __future__ import annotations

MESSAGE_OVERHEAD = 4  # role markers and separators most chat templates add per message


def estimate_tokens(text: str) -> int:
    """About four ASCII characters per token; other scripts (CJK, emoji) come close to one per character."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    return (ascii_chars + 3) // 4 + (len(text) - ascii_chars) + MESSAGE_OVERHEAD


class TokenCalibration:
    """Learns how far the estimate is from a model's real tokenizer, per model."""

    def __init__(self, smoothing: float = 0.3) -> None:
        self._factors: dict[str, float] = {}
        self._smoothing = smoothing

    def factor(self, model: str) -> float:
        return self._factors.get(model, 1.0)

    def observe(self, model: str, estimated: int, actual: int) -> None:
        if estimated <= 0 or actual <= 0:
            return
        ratio = min(3.0, max(0.33, actual / estimated))
        old = self._factors.get(model)
        self._factors[model] = ratio if old is None else old + self._smoothing * (ratio - old)

    def scale(self, model: str, tokens: int) -> int:
        return int(tokens * self.factor(model)) + 1
