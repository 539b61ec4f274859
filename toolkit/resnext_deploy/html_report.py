"""Our Markdown reports as self-contained HTML pages: tables, lists, headings, and the PNG plots they
reference embedded as base64, so one file can be attached to a ticket or opened offline. Standard library only."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import List, Optional, Union

_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
          "td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f3f3f3}")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$")


def _inline(text: str) -> str:
    esc = html.escape(text)
    esc = re.sub(r"`([^`]+)`", r"<code>\1</code>", esc)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", esc)


def _image(alt: str, path: str, base: Optional[Path]) -> str:
    p = Path(path) if Path(path).is_absolute() or base is None else base / path
    if p.suffix.lower() != ".png" or not p.is_file():
        return f"<p>[{html.escape(alt)}: {html.escape(path)}]</p>"
    data = base64.b64encode(p.read_bytes()).decode()
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def markdown_to_html(md: str, base: Optional[Path] = None) -> str:
    """The Markdown our reports use (headings, bullets, pipe tables, code spans, bold, images) as HTML."""
    out: List[str] = []
    in_list = in_table = False
    for line in md.splitlines():
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        if in_table and not line.startswith("|"):
            out.append("</table>")
            in_table = False
        image = _IMAGE.match(line)
        if image:
            out.append(_image(image.group(1), image.group(2), base))
        elif line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(c and set(c) <= set("-:") for c in cells):
                continue  # the header separator
            tag = "td" if in_table else "th"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_list:
        out.append("</ul>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def html_page(title: str, md: str, base: Union[str, Path, None] = None) -> str:
    """A self-contained HTML page of ``md``; images are read relative to ``base`` and embedded."""
    body = markdown_to_html(md, Path(base) if base is not None else None)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")
