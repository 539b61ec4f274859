"""Shared fixtures: one real demo build per test session (real ONNX Runtime and OpenVINO)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Before torch (and its OpenMP runtime) is imported anywhere in the session, and for every subprocess it starts:
# OpenMP's threads wait for work asleep, not spinning. Spinning threads on a busy machine (CI runners, shared cores)
# made each PyTorch forward of the demo ~40x slower (2 threads: 3 s vs 70 ms per batch of 8 at load 13 on 2 cores);
# the numbers computed are the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "toolkit") not in sys.path:  # run from a checkout without installing too
    sys.path.insert(0, str(ROOT / "toolkit"))


@pytest.fixture(autouse=True)
def _no_github_step_summary(monkeypatch):
    """The suite run inside GitHub Actions must not append every test build's summary to the job's page."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture(scope="session", autouse=True)
def device_key(tmp_path_factory):
    """The "device" key every `compile --bundle` in the tests signs with (never the user's ~/.config): the path."""
    path = tmp_path_factory.mktemp("device-key") / "device-key"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNEXT_DEPLOY_DEVICE_KEY", str(path))
        mp.setenv("XDG_CONFIG_HOME", str(path.parent / "config"))  # no pinned workstation key from the user's
        yield path


@pytest.fixture(scope="session")
def device_public_key(device_key):
    """The device key's public key (base64), made now if no compile --bundle made it yet."""
    from resnext_deploy.buildfolder.signing import load_or_create_key

    return load_or_create_key(device_key)[0].public.text


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory):
    """The shipped demo built for x86-cpu with the shipped recipe: a BuildResult."""
    from resnext_deploy.pipeline.build import build

    out = tmp_path_factory.mktemp("demo-build") / "x86-cpu"
    return build(model=None, target="x86-cpu", out=out)


@pytest.fixture(scope="session")
def fast_recipe(tmp_path_factory):
    """A recipe that builds only what a test needs quickly: both backends, few timing iterations."""
    path = tmp_path_factory.mktemp("recipes") / "fast.toml"
    path.write_text(
        """
target = "x86-cpu"
[backends.onnxruntime]
precisions = ["int8"]
[backends.openvino]
precisions = ["int8"]
[calibration]
count = 64
[evaluation]
limit = 100
warmup = 1
iterations = 5
"""
    )
    return path


@pytest.fixture(scope="session")
def quick_timing(tmp_path_factory):
    """``quick_timing(target)``: a recipe file that is the shipped recipe of ``target`` with few timing runs (warmup 1,
    5 iterations). Everything is built and evaluated on every image as shipped; only latency and throughput rest on
    fewer runs (a shipped Jetson recipe's 20 + 200 batch-1 runs per artifact were most of a test build)."""
    folder = tmp_path_factory.mktemp("quick-timing")

    def recipe(target: str) -> Path:
        path = folder / f"{target}.toml"
        path.write_text(f'extends = "{target}"\n[evaluation]\nwarmup = 1\niterations = 5\n')
        return path

    return recipe


@pytest.fixture(scope="session")
def collapsed_build(tmp_path_factory, fast_recipe):
    """The fast demo build whose calibration collapsed: one constant image, plain INT8 (the fallback, on by default,
    would leave the stem conv in float and pass), gate failed. Made once through the CLI with --junit and --summary:
    {"out", "output", "exit_code", "recipe", "junit", "summary"} (the junit and summary files sit beside "out")."""
    from click.testing import CliRunner
    from PIL import Image

    from resnext_deploy.cli import cli

    d = tmp_path_factory.mktemp("collapsed")
    recipe = d / "no-fallback.toml"
    recipe.write_text(fast_recipe.read_text() + "\n[fallback]\nenabled = false\n")
    calib = d / "calib"
    calib.mkdir()
    Image.new("L", (32, 32), color=0).save(calib / "black.png")  # one constant image: activation ranges collapse
    out, junit, summary = d / "bad", d / "bad.junit.xml", d / "bad.summary.md"
    res = CliRunner().invoke(cli, ["-q", "build", "--recipe", str(recipe), "--calib", str(calib), "--out", str(out),
                                   "--junit", str(junit), "--summary", str(summary)])
    return {"out": out, "output": res.output, "exit_code": res.exit_code, "recipe": recipe, "junit": junit,
            "summary": summary}


@pytest.fixture(scope="session")
def jetson_recipe(tmp_path_factory):
    """A Jetson recipe with DLA (like Orin NX) that builds quickly: few calibration images and timing runs."""
    path = tmp_path_factory.mktemp("recipes") / "jetson-fast.toml"
    path.write_text(
        """
target = "jetson-orin-nx"
description = "test: a Jetson with a DLA, fast"
device = "jetson"
[backends.tensorrt]
precisions = ["fp16", "int8"]
dla_core = 0
max_batch = 8
golden_images = 12
tensorrt_version = "10.3.0"
jetpack = "6.2"
[calibration]
count = 128
[evaluation]
limit = 100
warmup = 1
iterations = 5
"""
    )
    return path


@pytest.fixture(scope="session")
def jetson_build(tmp_path_factory, jetson_recipe):
    """The demo built for a Jetson target on this machine (no TensorRT, no GPU): ends in a bundle."""
    from resnext_deploy.pipeline.build import build

    out = tmp_path_factory.mktemp("jetson-build") / "jetson-orin-nx"
    return build(model=None, recipe_path=jetson_recipe, out=out)


#: /proc/cpuinfo facts of one CPU per ISA class (flags as the kernel spells them) and OpenVINO's BF16 answer there
ISA_FACTS = {
    "avx2": ("Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz (Haswell)", "sse4_1 sse4_2 avx avx2 fma", False),
    "vnni": ("Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz (Cascade Lake)",
             "avx avx2 fma avx512f avx512bw avx512vl avx512_vnni", False),
    "amx": ("Intel(R) Xeon(R) Platinum 8480+ (Sapphire Rapids)",
            "avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 amx_bf16", True),
}


@pytest.fixture(params=sorted(ISA_FACTS))
def isa(request):
    """Run the test as an AVX2, a VNNI and an AMX CPU, on any machine: the host facts (host.cpu.host_cpu, and
    OpenVINO's BF16 answer host.cpu.bf16_missing) are replaced; kernels still run on the real CPU.
    Yields the class name ("avx2" | "vnni" | "amx"); ``isa_facts`` has the CpuInfo."""
    from resnext_deploy.host.cpu import parse_cpuinfo, pretend

    model, flags, bf16 = ISA_FACTS[request.param]
    cpu = parse_cpuinfo(f"vendor_id\t: GenuineIntel\nmodel name\t: {model}\ncpu MHz\t\t: 2000.000\nflags\t\t: {flags}\n")
    with pretend(cpu, bf16):
        assert cpu.isa == request.param
        yield request.param
