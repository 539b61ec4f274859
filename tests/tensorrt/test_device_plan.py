"""`--target jetson`: the device's facts read from files under an injected root, and the engine plan per module.

No TensorRT needed: the facts come from a fake device tree, release file and dpkg status per module, as the
rehearsal (tests/device) injects them into a real `compile --bundle`.
"""

from __future__ import annotations

import pytest

from resnext_deploy.errors import BadInputError
from resnext_deploy.tensorrt.device_facts import DeviceFacts, detect, tensorrt_from_dpkg
from resnext_deploy.tensorrt.device_plan import (
    MODULES,
    example_facts,
    find_module,
    plan_for_device,
    table_plans,
)
from resnext_deploy.tensorrt.engine_plan import plan_engines
from resnext_deploy.tensorrt.platforms import PLATFORMS, ships_calibration_cache, target_summary

SETTINGS = {"precisions": ["fp16", "int8"], "min_batch": 1, "opt_batch": 1, "max_batch": 8, "workspace_mb": 1024,
            "dla_core": 0, "gpu_fallback": True}
SPECS = plan_engines(SETTINGS)
GPU, DLA = ["tensorrt-fp16", "tensorrt-int8"], ["tensorrt-dla0-fp16", "tensorrt-dla0-int8"]


def fake_root(tmp_path, model, release=None, dpkg=None, sysfs=False):
    base = tmp_path / "root"
    tree = base / ("sys/firmware/devicetree/base" if sysfs else "proc/device-tree")
    tree.mkdir(parents=True)
    (tree / "model").write_bytes(model.encode() + b"\0")
    if release:
        (base / "etc").mkdir()
        (base / "etc/nv_tegra_release").write_text(release)
    if dpkg:
        (base / "var/lib/dpkg").mkdir(parents=True)
        (base / "var/lib/dpkg/status").write_text(dpkg)
    return base


DPKG_JP6 = """Package: libnvinfer10
Status: install ok installed
Version: 10.3.0.30-1+cuda12.5

Package: libnvinfer-dev
Status: install ok installed
Version: 10.3.0.30-1+cuda12.5

Package: libnvinfer8
Status: deinstall ok config-files
Version: 8.6.2.3-1+cuda12.2
"""


def test_facts_are_read_from_the_injected_root(tmp_path):
    root = fake_root(tmp_path, "NVIDIA Jetson AGX Orin Developer Kit",
                     "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan\n",
                     DPKG_JP6)
    f = detect(root)
    assert (f.model, f.l4t, f.tensorrt_version, f.tensorrt_from, f.dla_cores) == (
        "NVIDIA Jetson AGX Orin Developer Kit", "36.4.3", "10.3.0.30", "dpkg", None)
    assert f.jetson and f.l4t_major_minor == (36, 4)
    # the sysfs copy of the device tree, and a removed package does not count
    f2 = detect(fake_root(tmp_path / "b", "NVIDIA Jetson Xavier NX Developer Kit", "# R35 (release), REVISION: 4.1\n",
                          sysfs=True))
    assert (f2.model, f2.l4t, f2.tensorrt_version) == ("NVIDIA Jetson Xavier NX Developer Kit", "35.4.1", None)
    assert tensorrt_from_dpkg(tmp_path / "nowhere") is None


def test_the_env_var_points_detection_at_a_fake_root(tmp_path, monkeypatch):
    root = fake_root(tmp_path, "NVIDIA Jetson AGX Thor Developer Kit", "# R38 (release), REVISION: 2.0\n")
    monkeypatch.setenv("RESNEXT_DEPLOY_DEVICE_ROOT", str(root))
    assert detect().model == "NVIDIA Jetson AGX Thor Developer Kit"
    monkeypatch.setenv("RESNEXT_DEPLOY_DEVICE_ROOT", str(tmp_path / "empty"))
    assert not detect().jetson and plan_for_device(SPECS, detect()) is None  # a workstation: no plan, no refusal


@pytest.mark.parametrize("model,key", [
    ("NVIDIA Jetson Xavier NX Developer Kit", "xavier-nx"), ("Jetson-AGX", "agx-xavier"),
    ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", "orin-nano"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "orin-nx"),
    ("NVIDIA Jetson AGX Orin Developer Kit", "agx-orin"), ("NVIDIA Jetson AGX Thor Developer Kit", "agx-thor"),
    ("NVIDIA Jetson Nano Developer Kit", None), ("Raspberry Pi 5 Model B Rev 1.0", None),
])
def test_modules_are_told_apart_by_the_device_tree_model(model, key):
    m = find_module(model)
    assert (m.key if m else None) == key


EXPECTED = {  # module, row -> engines built (DESIGN.md's table: DLA on Xavier and Orin NX/AGX with JetPack 5/6, AGX Orin on 11.4.1+)
    ("xavier-nx", "jetpack-5.1"): GPU + DLA, ("agx-xavier", "jetpack-5.1"): GPU + DLA,
    ("orin-nano", "jetpack-5.1"): GPU, ("orin-nano", "jetpack-6.2"): GPU, ("orin-nano", "jetpack-7.2"): GPU,
    ("orin-nx", "jetpack-5.1"): GPU + DLA, ("orin-nx", "jetpack-6.2"): GPU + DLA, ("orin-nx", "jetpack-7.2"): GPU,
    ("agx-orin", "jetpack-5.1"): GPU + DLA, ("agx-orin", "jetpack-6.2"): GPU + DLA, ("agx-orin", "jetpack-7.2"): GPU,
    ("agx-orin", "jetpack-7.2.2-trt11"): GPU + DLA,
    ("agx-thor", "jetpack-7.0"): GPU, ("agx-thor", "jetpack-7.2"): GPU, ("agx-thor", "jetpack-7.2.2-trt11"): GPU,
}


def test_every_module_and_row_of_the_table_gets_its_plan():
    plans = {(p.module.key, p.row.key): p for p in table_plans(SPECS)}
    assert {k: [s.name for s in p.engines] for k, p in plans.items()} == EXPECTED
    for (module, row), p in plans.items():
        assert not p.assumed_row and p.row.key == row
        assert sorted([s.name for s in p.engines] + [d["engine"] for d in p.dropped]) == sorted(GPU + DLA)
        sources = {s.name: p.source(s) for s in p.engines}
        if p.strongly_typed:  # TensorRT 11: FP16 from the FP16 ONNX, INT8 from Q/DQ, no calibration cache
            assert sources["tensorrt-fp16"] == "model-fp16.onnx"
            assert all(v in ("model-fp16.onnx", "model-int8-qdq-fp16.onnx") for v in sources.values())
        else:
            assert sources["tensorrt-fp16"] == "model-fp32.onnx" and sources["tensorrt-int8"] == "model-int8-qdq.onnx"
            if "tensorrt-dla0-int8" in sources:
                assert sources["tensorrt-dla0-int8"] == "model-fp32.onnx + calibration.cache"


def test_tensorrt_dla_cores_override_the_module_table():
    facts = example_facts(MODULES[4], PLATFORMS["jetpack-6.2"])  # AGX Orin
    no_dla = DeviceFacts(facts.root, facts.model, facts.l4t, "10.3.0.30", "python", 0)  # builder.num_DLA_cores == 0
    plan = plan_for_device(SPECS, no_dla)
    assert [s.name for s in plan.engines] == GPU
    assert plan.dropped[0]["why"] == "needs DLA core 0; this device has 0"


@pytest.mark.parametrize("model,l4t,trt,says", [
    ("NVIDIA Jetson AGX Orin Developer Kit", "36.3.0", "8.6.2.3", "L4T release (36.3.0)"),  # JetPack 6.0
    ("NVIDIA Jetson AGX Orin Developer Kit", "36.4.3", "8.6.2.3", "TensorRT 8.6.2.3 is not in the table"),
    ("NVIDIA Jetson Orin Nano Developer Kit", "38.2.0", "11.4.1", "TensorRT 11.4.1 is not in the table"),
    ("NVIDIA Jetson Nano Developer Kit", "32.7.1", None, "is not a Jetson module of the table"),
])
def test_a_device_or_tensorrt_outside_the_table_is_refused_naming_both(model, l4t, trt, says):
    with pytest.raises(BadInputError) as err:
        plan_for_device(SPECS, DeviceFacts("/", model, l4t, trt, "python" if trt else None, None))
    msg = str(err.value)
    assert says in msg and model in msg and "Jetson AGX Thor: JetPack 7.0 / 7.1: TensorRT 10.13" in msg


def test_without_tensorrt_the_l4t_release_picks_the_row():
    plan = plan_for_device(SPECS, DeviceFacts("/", "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                                              "35.5.0", None, None, None))
    assert plan.row.key == "jetpack-5.1" and plan.assumed_row
    assert "assumed" in plan.lines()[0] and [s.name for s in plan.engines] == GPU + DLA


def test_the_generic_target_ships_the_cache_and_lists_every_jetson_row():
    assert ships_calibration_cache("jetson", 0)
    assert len(target_summary("jetson")) == 5 and "DLA" in target_summary("jetson")[0]


def test_targets_lists_jetson_first_as_the_one_for_an_unknown_module():
    from click.testing import CliRunner

    from resnext_deploy.cli import cli
    from resnext_deploy.recipes import list_targets, load_recipe

    assert next(iter(list_targets())) == "jetson"
    out = CliRunner().invoke(cli, ["targets"]).output
    assert out.startswith("jetson ") and "don't know the module" in out.splitlines()[0]
    r = load_recipe(None, "jetson")
    assert r.backend("tensorrt")["dla_core"] == 0 and r.data["device"] == "jetson"
