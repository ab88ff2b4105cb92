"""Text from a model or a web page, made safe to print: it can never drive the operator's terminal.

Every control character except newline and tab is shown as a visible symbol instead of being obeyed, so
an escape sequence (CSI, OSC, …) stays on screen as harmless text (`␛[A`) and cannot move the cursor,
recolour, retitle or ring the terminal. A C1 control (U+0080–U+009F) is the 8-bit spelling of ESC plus a
character and is shown that way (U+009B, the 8-bit CSI, as `␛[`). A carriage return before a newline,
or at the end of text still streaming, is a line ending and is dropped; elsewhere it would let text
overwrite its own line, so it is shown as `␍`. The mapping is per character, so a growing reply keeps
growing: the safe text of a prefix is a prefix of the safe text of the whole.
"""

from __future__ import annotations

import re

_CONTROL_PICTURES = {code: chr(0x2400 + code) for code in range(0x20) if chr(code) not in "\n\t"}
_CONTROL_PICTURES[0x7F] = "\u2421"  # ␡
_CONTROL_PICTURES.update({code: "\u241b" + chr(code - 0x40) for code in range(0x80, 0xA0)})
_LINE_ENDING_CR = re.compile(r"\r+(?=\n|\Z)")


def neutralize(text: str) -> str:
    return _LINE_ENDING_CR.sub("", text).translate(_CONTROL_PICTURES)
