"""Names from the file system or the user, made safe to show: a terminal, a log or a text file gets them escaped.

A folder name may hold bytes that are not UTF-8 (Python keeps them as surrogates, ``bad\\udcffname.png``) or
control characters (an OSC 52 escape that writes the clipboard, a carriage return that hides text). Both are shown
as Python escapes (``\\xff``, ``\\x1b``); everything printable, including non-ASCII letters, is kept."""

from __future__ import annotations

import os
import unicodedata

#: Unicode categories that are never shown raw: controls (C0, C1, DEL), format characters (bidi overrides that
#: reorder what a reader sees), surrogates (undecodable bytes), unassigned and private use
_HIDDEN = ("Cc", "Cf", "Cs", "Co", "Cn")


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by the surrogateescape error handler
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(name: "str | bytes | os.PathLike[str]") -> str:
    """``name`` with every control, format, surrogate or unassigned character written as an escape."""
    text = os.fsdecode(name) if isinstance(name, bytes) else os.fspath(name)
    if text.isprintable() and not any(unicodedata.category(c) == "Cf" for c in text):
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _HIDDEN else c for c in text)

