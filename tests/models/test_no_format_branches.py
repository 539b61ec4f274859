"""The pipeline asks the format registry (models/formats/) and never branches on a format's name.

A grep over the toolkit's sources outside models/formats/ for the ways a format name used to be tested: a comparison
of a model's ``kind`` or a string equal to a format name, the old detectors, and the export code pipeline/ used to
hold. models/keras.py is the Keras and TensorFlow loader the keras and saved_model plug-ins call: what it tests about
its own files (a SavedModel folder or a .keras zip) is the plug-ins' business, so it is left out.
"""

from __future__ import annotations

import re
from pathlib import Path

from resnext_deploy.models import formats

PACKAGE = Path(formats.__file__).resolve().parents[2]
PLUGINS = PACKAGE / "models" / "formats"
LOADERS = {PACKAGE / "models" / "keras.py"}

_NAMES = "|".join(re.escape(n) for n in formats.names())
#: a model's kind, not an artifact's (``a.kind == "onnx"`` is the kind of a build artifact, buildfolder/artifacts.py)
_KIND = r"""(?<!\ba\.)(?<!\bart\.)(?<!artifact\.)(kind|format|fmt)"""
BRANCHES = [
    # src.kind == "keras", model.get("kind") != "onnx", fmt == "torchscript", model_format(p) == "torch"
    re.compile(rf"""{_KIND}\w*(\([^()]*\))?["')\]]*\s*(==|!=)\s*["']({_NAMES})["']"""),
    re.compile(rf"""{_KIND}\w*(\([^()]*\))?["')\]]*\s+(not\s+)?in\s*[(\[{{]\s*["']({_NAMES})["']"""),
    re.compile(r"""\b(is_keras_source|is_saved_model|is_keras_demo|is_torchscript_archive)\("""),
]


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        if PLUGINS in path.parents or path in LOADERS:
            continue
        yield path


def test_no_format_name_branch_outside_the_plugins():
    found = []
    for path in _sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(p.search(code) for p in BRANCHES):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not found, "format-name branches outside models/formats/ (ask the plug-in instead):\n" + "\n".join(found)


def test_models_do_not_import_pipeline_export():
    """The formats' export code lives under models/export/ and the check engine under models/check/: nothing in
    models/ reaches into pipeline/ (tests/test_layout.py holds the layers; this names the old export modules)."""
    found = []
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"^\s*from\s+\.+pipeline\b|^\s*import\s+resnext_deploy\.pipeline|resnext_deploy\.pipeline", line):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
    assert not (PACKAGE / "pipeline" / "export.py").exists() and not (PACKAGE / "pipeline" / "keras_export.py").exists()
