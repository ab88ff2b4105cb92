"""Turns what people attach into model input: text read in, images passed on, the rest named."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from bot.models import Attachment
from bot.providers.base import Image

TEXT_CHAR_LIMIT = 40_000
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
TEXT_TYPES = {
    "application/json",
    "application/xml",
    "application/x-yaml",
    "application/yaml",
    "application/toml",
}
TEXT_SUFFIXES = {
    ".txt", ".md", ".rst", ".csv", ".tsv", ".log", ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".xml",
    ".html", ".css", ".py", ".js", ".ts", ".tsx", ".jsx", ".java", ".go", ".rs", ".c", ".h", ".cpp", ".hpp",
    ".cs", ".rb", ".php", ".sh", ".sql", ".kt", ".swift", ".scala", ".lua", ".r", ".tex", ".diff", ".patch",
}  # fmt: skip


@dataclass(slots=True)
class AttachmentInput:
    text: str = ""  # appended to the user's message
    images: list[Image] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown to the user under the reply


def read_attachments(attachments: tuple[Attachment, ...], *, vision: bool) -> AttachmentInput:
    result = AttachmentInput()
    parts: list[str] = []
    for attachment in attachments:
        name = attachment.filename
        if attachment.unavailable_reason or attachment.data is None:
            reason = attachment.unavailable_reason or "it could not be downloaded"
            result.notes.append(f"{name} was not read: {reason}.")
            parts.append(f"[attached file {name} could not be read]")
            continue
        content_type = (attachment.content_type or "").split(";")[0].strip().lower()
        if content_type in IMAGE_TYPES:
            # The text is the same whichever model answers: it is stored once, when the message arrives.
            parts.append(f"[attached image {name}]")
            if vision:
                result.images.append(Image(content_type, attachment.data))
            else:
                result.notes.append(f"{name} is an image and this model does not take images.")
            continue
        text = _as_text(attachment.data, content_type, name)
        if text is None:
            result.notes.append(f"{name} is not a file type I can read.")
            parts.append(f"[attached file {name} of a type that cannot be read]")
            continue
        if len(text) > TEXT_CHAR_LIMIT:
            text = text[:TEXT_CHAR_LIMIT]
            result.notes.append(f"{name} was cut to its first {TEXT_CHAR_LIMIT:,} characters.")
        parts.append(f'<file name="{name}">\n{text}\n</file>')
    result.text = "\n\n".join(parts)
    return result


def _as_text(data: bytes, content_type: str, name: str) -> str | None:
    looks_textual = (
        content_type.startswith("text/")
        or content_type in TEXT_TYPES
        or PurePosixPath(name).suffix.lower() in TEXT_SUFFIXES
    )
    if not looks_textual or b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
