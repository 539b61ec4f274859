"""The report: report.json (schema.py), report.md (markdown.py), report.html (html.py, Jinja2 templates),
the charts (charts.py, matplotlib to SVG) and the gallery of the images INT8 gets wrong (gallery.py).

The names other modules import from ``resnext_deploy.report`` stay here.
"""

from .gfm import md_table
from .markdown import render_markdown
from .schema import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, make_report, read_report, write_report
from .tables import COLUMNS, PARITY, render_table, table_rows

__all__ = ["COLUMNS", "PARITY", "REPORT_SCHEMA", "REPORT_SCHEMA_VERSION", "make_report", "md_table", "read_report",
           "render_markdown", "render_table", "table_rows", "write_report"]
