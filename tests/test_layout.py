"""The house rules the layout keeps: no import circles, no private names across modules, no backend-name branches.

These read the source (ast and regular expressions), so they hold for code paths no other test runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit" / "resnext_deploy"
#: the plug-ins themselves may know their own names
BACKEND_HOMES = ("backends/", "tensorrt/")


def _import_graph() -> dict:
    """module -> the package modules it imports (module level or lazily), from the source."""
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    graph = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in mods else target)
        graph[name] = {e for e in edges if e in mods and e != name}
    return graph


def test_no_import_circle_even_through_lazy_imports():
    """build -> fallback -> build and report -> fallback were circles once; none may come back (lazy ones included)."""
    graph = _import_graph()
    circles = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start and len(path) > 1:
                    circles.append(" -> ".join(path + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not circles, "import circles:\n" + "\n".join(sorted(set(circles))[:10])


def test_no_code_outside_the_backends_tests_a_backend_name():
    """Ask the backend (its declared attributes and hooks); don't compare its name."""
    names = "|".join(("onnxruntime", "openvino", "tensorrt"))
    pattern = re.compile(rf"""(==|!=)\s*["']({names})["']|["']({names})["']\s*(==|!=)|["']({names})["']\s+(not\s+)?in\s+\w*\.?enabled_backends""")
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(BACKEND_HOMES):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{rel}:{i}: {line.strip()}")
    assert not bad, "backend-name branches outside backends/ and tensorrt/:\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    """A `_name` is its module's business: another module that needs it gets a public name instead."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            ours = isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("resnext_deploy"))
            if not ours:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    bad.append(f"{rel}:{node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)
