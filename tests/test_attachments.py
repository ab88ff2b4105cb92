from bot.attachments import TEXT_CHAR_LIMIT, read_attachments
from bot.models import Attachment


def test_text_files_are_read_in_and_cut_with_a_visible_note() -> None:
    small = Attachment("notes.md", "text/markdown", 5, data=b"hello")
    big = Attachment("big.log", None, TEXT_CHAR_LIMIT + 10, data=b"x" * (TEXT_CHAR_LIMIT + 10))
    result = read_attachments((small, big), vision=False)
    assert '<file name="notes.md">\nhello\n</file>' in result.text
    assert "x" * TEXT_CHAR_LIMIT in result.text and "x" * (TEXT_CHAR_LIMIT + 1) not in result.text
    assert result.notes == [f"big.log was cut to its first {TEXT_CHAR_LIMIT:,} characters."]


def test_images_go_to_vision_models_and_are_named_otherwise() -> None:
    image = Attachment("cat.png", "image/png", 4, data=b"\x89PNG")
    seen = read_attachments((image,), vision=True)
    assert [(i.media_type, i.data) for i in seen.images] == [("image/png", b"\x89PNG")]
    assert seen.notes == []
    blind = read_attachments((image,), vision=False)
    assert blind.images == []
    assert blind.notes == ["cat.png is an image and this model does not take images."]


def test_binary_and_missing_files_get_a_note_instead_of_silence() -> None:
    pdf = Attachment("report.pdf", "application/pdf", 3, data=b"%PDF\x00")
    fake_text = Attachment("data.txt", "text/plain", 3, data=b"a\x00b")
    missing = Attachment("huge.zip", "application/zip", 10**9, unavailable_reason="it is over 8 MB")
    result = read_attachments((pdf, fake_text, missing), vision=True)
    assert result.notes == [
        "report.pdf is not a file type I can read.",
        "data.txt is not a file type I can read.",
        "huge.zip was not read: it is over 8 MB.",
    ]
    assert "[attached file huge.zip could not be read]" in result.text
