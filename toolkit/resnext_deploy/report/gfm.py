"""GitHub-flavoured Markdown primitives every Markdown writer uses: escaped text, table cells, tables."""

from __future__ import annotations

import re
from typing import Any, List, Sequence

from ..names import shown

_BACKTICKS = re.compile(r"`+")


def md_safe(text: str) -> str:
    """``text`` with every ``<`` outside code spans written as ``&lt;``: no raw HTML (a tag, an ``onload``, an
    autolink) can come from a label, a file or folder name, whatever the renderer's HTML setting. Code spans are
    found as CommonMark finds them (a run of n backticks not after a backslash, closed by the next run of exactly
    n), so a name holding backticks cannot smuggle a tag out of one; inside them ``<`` is literal and safe.
    Idempotent; control characters are escaped (names.shown), so a name cannot start a new line."""
    out, i, text = [], 0, shown(text)
    while i < len(text):
        m = _BACKTICKS.search(text, i)
        if m is None:
            break
        start = m.start()
        backslashes = len(text[:start]) - len(text[:start].rstrip("\\"))
        if backslashes % 2:  # an escaped backtick is literal: the run starts one later
            start += 1
        run = len(m.group()) - (start - m.start())
        close = next((c for c in _BACKTICKS.finditer(text, m.end()) if len(c.group()) == run), None) if run else None
        out.append(text[i:start].replace("<", "&lt;"))
        end = close.end() if close is not None else m.end()
        out.append(text[start:end] if close is not None else text[start:end].replace("<", "&lt;"))
        i = end
    out.append(text[i:].replace("<", "&lt;"))
    return "".join(out)


def md_cell(text: Any) -> str:
    """One table cell: pipes escaped, line breaks as spaces (GFM cells are one line), no raw HTML (md_safe)."""
    return md_safe(" ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|"))


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    """A GFM table; every row gets exactly as many cells as the header (short rows padded, long ones refused)."""
    n = len(head)
    for r in rows:
        if len(r) > n:
            raise ValueError(f"table row has {len(r)} cells for a {n}-cell header: {list(r)}")
    out = ["| " + " | ".join(md_cell(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(md_cell(c) for c in list(r) + [""] * (n - len(r))) + " |" for r in rows]
    return out
