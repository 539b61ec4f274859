"""The backend contract, for every registered backend: compile each precision it builds, load in `with`, infer.

One test per interface (NNCF's template tests in spirit): a new backend registered with
``backends.register`` is covered by adding nothing here. Backends this machine cannot run are skipped
with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from resnext_deploy import backends
from resnext_deploy.buildfolder.artifacts import Artifact
from resnext_deploy.recipes import defaults


def _source(build, precision: str, be) -> Artifact:
    by_name = {a.name: a for a in build.artifacts}
    if precision == "int8":
        flavour = be.int8_flavour({**be.defaults, "precisions": ["int8"]})
        return by_name.get(f"onnx-int8-{flavour}") or by_name["onnx-int8-uint8"]
    return by_name["onnx-fp32"]


@pytest.mark.parametrize("name", backends.names())
def test_every_backend_declares_what_the_toolkit_needs(name):
    be = backends.get(name)
    assert be.name == name and be.module and be.kind and be.suffixes
    assert set(be.precisions) <= {"fp32", "fp16", "bf16", "int8"} and "int8" in be.precisions
    for precision in be.precisions:  # None, or why this machine cannot build it (a sentence for the report)
        reason = be.cannot_build(precision)
        assert reason is None or (isinstance(reason, str) and len(reason) > 20)
    section = defaults()["backends"][name]
    assert section["precisions"] == [] and set(be.defaults) <= set(section)
    assert be.int8_flavour(dict(section, precisions=["int8"])) in ("uint8", "int8")
    assert be.int8_flavour(dict(section, precisions=[])) is None
    be.validate(dict(section, precisions=list(be.precisions)), "the contract test")
    assert backends.for_file(Path(f"model{be.suffixes[0]}")) == name


def _declared():
    return [(n, p) for n in backends.names() for p in backends.get(n).precisions]


@pytest.mark.parametrize("name,precision", _declared())
def test_compile_load_infer(name, precision, demo_build, tmp_path):
    """Each declared precision compiles, loads and infers close to the float model; one this machine cannot build
    (OpenVINO's bf16 without BF16 arithmetic) is skipped with the backend's reason."""
    be = backends.get(name)
    if not be.available():
        pytest.skip(f"{name} cannot run here: its package '{be.module}' (or its device) is missing")
    reason = be.cannot_build(precision)
    if reason:
        pytest.skip(f"{name} {precision}: {reason}")
    from resnext_deploy.data.datasets import load_labeled
    from resnext_deploy.preprocess import Preprocessing

    spec = Preprocessing.from_dict(demo_build.manifest["preprocessing"])
    val = load_labeled(demo_build.manifest["inputs"]["validation"]["folder"], spec, 4)
    images = val.data
    settings = dict(defaults()["backends"][name], precisions=list(be.precisions))
    outputs = {}
    for p in dict.fromkeys(["fp32", precision]):  # the float model of the same backend is the reference
        built = _source(demo_build, p, be)
        copy = tmp_path / built.path
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built.abspath(demo_build.out_dir), copy)
        src = Artifact.from_files(built.name, [copy], tmp_path, kind="onnx", backend="onnx", precision=built.precision)
        art = be.compile(src, tmp_path / name / p, p, settings, root=tmp_path)
        assert art.backend == name and art.precision == p and art.kind == be.kind and art.parent == src.name
        assert all((tmp_path / f).is_file() for f in art.files)
        with be.load(art.abspath(tmp_path), settings) as runner:
            assert isinstance(runner, backends.Runner) and isinstance(runner.details, dict)
            out = runner.infer(images)
            if p == "bf16":  # built only where it runs: the plugin executes bf16, not f32
                assert runner.details["execution"]["inference_precision"] == "bf16"
                assert art.settings["float_layers_precision"] == "bf16"
        assert out.shape == (len(images), 10) and out.dtype == np.float32 and np.isfinite(out).all()
        outputs[p] = out
    ref, out = outputs["fp32"], outputs[precision]
    cos = np.sum(out * ref, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > (0.999 if precision == "bf16" else 0.9), f"{name} {precision}: logits far from the float model's (cosine {cos.min():.3f})"
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.75
