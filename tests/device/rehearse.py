"""Rehearse the Jetson hand-off on JetPack's Pythons (3.8: JetPack 5, 3.10: JetPack 6, 3.12: JetPack 7), no device.

    python tests/device/rehearse.py BUILD_DIR [--python 3.8 --python 3.10 ...] [--work DIR] [--json OUT]

BUILD_DIR is a `resnext-deploy build --target jetson` (or jetson-*) directory (made on this machine, without TensorRT). For each
Python (found under pyenv: ~/.pyenv/versions/<x.y>.*/bin/python, or $REHEARSE_PYTHON_<x>_<y>), in a clean virtualenv
holding only numpy and onnxruntime at versions that support that Python (no torch, no openvino):

1. the device commands of the bundle's README run verbatim (tensorrt/handoff.py), in a fresh "device home"; the
   two copies (scp) become local `cp`, the only change: tar, cd, pip install of the bundle's own wheel (resnext-deploy
   comes from nowhere else: `sha256sum -c SHA256SUMS`, then pip installs the wheel pinned by its sha256
   (requirements.txt, --require-hashes) and its dependencies from the index),
   `resnext-deploy compile --bundle .` (exit 7: no TensorRT here, every other check passed), with the device facts of
   this Python's first Jetson module injected (a fake device tree, /etc/nv_tegra_release and dpkg status under
   $RESNEXT_DEPLOY_DEVICE_ROOT); its device report must carry that module's engine plan;
1b. a `--target jetson` bundle: the engine plan of every module of the table on this Python's JetPack rows (3.8:
   JetPack 5, 3.10: JetPack 6, 3.12: JetPack 7), each module's facts injected the same way, in one process;
2. `runtime.load` and `resnext-deploy predict` on the bundle: top-1 of the golden images equals the workstation
   report's for the same artifact (the Q/DQ model), image by image;
3. back on the workstation (this Python): `resnext-deploy report BUILD --device device-report.json` on a copy of the
   build (exit 7: engines pending), then a tampered copy of the device report is refused (exit 2).

Prints one JSON line per Python (seconds, versions, exit codes) and exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

#: numpy and onnxruntime per Python: the newest releases that support it (onnxruntime 1.19.2 is the last for 3.8)
PINS: Dict[str, List[str]] = {
    "3.8": ["numpy==1.24.4", "onnxruntime==1.19.2"],
    "3.10": ["numpy==2.2.6", "onnxruntime==1.23.2"],
    "3.12": ["numpy==2.5.5", "onnxruntime==1.32.0"],
}
PYTHONS = ("3.8", "3.10", "3.12")
EXIT_BAD_INPUT, EXIT_PENDING_ON_DEVICE = 2, 7


class RehearsalError(RuntimeError):
    pass


class IndexUnavailable(RehearsalError):
    """numpy / onnxruntime for this Python could not be installed from the package index (offline?)."""


def find_python(version: str) -> Optional[str]:
    env = os.environ.get("REHEARSE_PYTHON_" + version.replace(".", "_"))
    if env:
        return env if Path(env).is_file() else None
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")),
                   key=lambda p: [int(x) for x in Path(p).parents[1].name.split(".") if x.isdigit()])
    return found[-1] if found else None


def _run(cmd: Any, cwd: Path, env: Dict[str, str], expect: int = 0, shell: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=str(cwd), env=env, shell=shell, capture_output=True, text=True,
                          executable="/bin/bash" if shell else None)
    if done.returncode != expect:
        raise RehearsalError(f"`{cmd if shell else ' '.join(map(str, cmd))}` in {cwd} exited {done.returncode} "
                             f"(expected {expect}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _bundle(build_dir: Path) -> Dict[str, Any]:
    report = json.loads((build_dir / "report.json").read_text())
    b = report.get("bundle")
    if not b or not b.get("device_steps"):
        raise RehearsalError(f"'{build_dir}' has no bundle with device steps: build it with --target jetson-*.")
    return b


def device_lines(build_dir: Path) -> List[str]:
    """The bundle README's device-steps block (shell lines), checked equal to what the build printed."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "toolkit"))
    from resnext_deploy.tensorrt.handoff import parse_readme_block

    b = _bundle(build_dir)
    lines = parse_readme_block((build_dir / b["directory"] / "README.md").read_text(encoding="utf-8"))
    printed = [ln for ln in b["device_steps"] if not ln.startswith("#")]
    if lines != printed:
        raise RehearsalError(f"The bundle README's device steps differ from the build's:\n{lines}\nvs\n{printed}")
    return lines


def fake_roots(version: str, work: Path) -> Dict[str, str]:
    """A fake device root per (module, row) of the table whose JetPack runs Python ``version``: "module@row" -> root.

    The device tree model, /etc/nv_tegra_release and dpkg's status as the module on that row writes them (the first
    L4T release of the row, the row's TensorRT as the libnvinfer<major> package); nothing else is faked.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "toolkit"))
    from resnext_deploy.tensorrt.device_plan import MODULES, example_facts
    from resnext_deploy.tensorrt.platforms import PLATFORMS

    roots: Dict[str, str] = {}
    for module in MODULES:
        for key in module.rows:
            row = PLATFORMS[key]
            if row.python != version:
                continue
            facts = example_facts(module, row)
            root = work / "roots" / f"{module.key}@{key}"
            (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
            (root / "proc/device-tree/model").write_bytes(facts.model.encode() + b"\0")
            (root / "etc").mkdir(exist_ok=True)
            major, minor, patch = facts.l4t.split(".")
            (root / "etc/nv_tegra_release").write_text(
                f"# R{major} (release), REVISION: {minor}.{patch}, GCID: 0, BOARD: generic, EABI: aarch64, DATE: -\n")
            (root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
            trt = facts.tensorrt_version
            (root / "var/lib/dpkg/status").write_text(f"Package: libnvinfer{trt.split('.')[0]}\nStatus: install ok "
                                                      f"installed\nVersion: {trt}-1+cuda\n")
            roots[f"{module.key}@{key}"] = str(root)
    return roots


PLAN_PROBE = (
    "import json, sys\n"
    "from resnext_deploy.tensorrt.bundle import read_bundle\n"
    "from resnext_deploy.tensorrt.device_facts import detect\n"
    "from resnext_deploy.tensorrt.device_plan import plan_for_bundle\n"
    "b = read_bundle('.')\n"
    "plans = {k: plan_for_bundle(b, detect(root)) for k, root in json.loads(sys.argv[1]).items()}\n"
    "print(json.dumps({k: p.to_dict() if p is not None else None for k, p in plans.items()}))\n"
)


def rehearse_one(version: str, python: str, build_dir: Path, work: Path, workstation_cli: str) -> Dict[str, Any]:
    t0 = time.perf_counter()
    b = _bundle(build_dir)
    lines = device_lines(build_dir)
    scp_out, tar, cd = lines[:3]
    at = next(i for i, ln in enumerate(lines) if ln.startswith("resnext-deploy compile"))
    install, compile_, (scp_back, merge) = " && ".join(lines[3:at]), lines[at], lines[at + 1:]
    venv, home, station = work / f"venv-{version}", work / f"device-{version}", work / f"workstation-{version}"
    for d in (venv, home, station):
        shutil.rmtree(d, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copytree(build_dir, station, symlinks=True)  # the merge rewrites the build: a copy, not the original
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "RESNEXT_DEPLOY_DEVICE_KEY")}
    env["XDG_CONFIG_HOME"] = str(home / ".config")  # the device key is made there on first use, not in the real ~
    _run([python, "-m", "venv", str(venv)], work, env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    try:
        _run(["python", "-m", "pip", "install", "-q", "--disable-pip-version-check", "--prefer-binary"] + PINS[version],
             work, env)
    except RehearsalError as exc:
        raise IndexUnavailable(f"pip could not install {' '.join(PINS[version])} for Python {version}: "
                               f"{str(exc)[-600:]}") from exc
    t_setup = time.perf_counter()
    # 1. copy: `scp <archive> <user>@<jetson>:` -> cp into the device home
    if not scp_out.startswith("scp "):
        raise RehearsalError(f"The first step is not the copy: {scp_out}")
    _run(["cp", scp_out.split()[1], str(home)], station, env)
    # 2. on the device, verbatim: tar, cd, pip install, compile (one shell: `cd` carries over)
    device = _run(" && ".join([tar, cd, install]), home, env, shell=True)
    bundle_dir = home / b["directory"]
    roots = fake_roots(version, work / f"facts-{version}")
    first = next(iter(roots), None)
    device_env = dict(env, RESNEXT_DEPLOY_DEVICE_ROOT=roots[first]) if first else env
    compiled = _run(f"{cd} && {compile_}", home, device_env, expect=EXIT_PENDING_ON_DEVICE, shell=True)
    device_report = json.loads((bundle_dir / "report.json").read_text())
    plans = {}
    if b.get("directory", "").endswith("-jetson-bundle"):  # the generic bundle: every module of this JetPack
        plans = json.loads(_run(["python", "-c", PLAN_PROBE, json.dumps(roots)], bundle_dir, env).stdout.splitlines()[-1])
        got = device_report.get("engine_plan") or {}
        if first and (got.get("module"), got.get("row")) != tuple(first.split("@")):
            raise RehearsalError(f"Python {version}: compile --bundle with {first}'s facts recorded the plan {got}")
    # toolkit only from the bundle's wheel
    shown = _run(["python", "-m", "pip", "show", "-f", "resnext-deploy"], home, env).stdout
    location = next((ln.split(":", 1)[1].strip() for ln in shown.splitlines() if ln.startswith("Location:")), "")
    if not location.startswith(str(venv)):
        raise RehearsalError(f"resnext-deploy is not installed in the rehearsal venv: {location}")
    freeze = _run(["python", "-m", "pip", "freeze"], home, env).stdout
    if any(ln.lower().startswith(("torch", "openvino")) for ln in freeze.splitlines()):
        raise RehearsalError(f"torch or openvino in the device venv:\n{freeze}")
    # 3. runtime.load and predict: the Q/DQ model's top-1 on the golden images equals the workstation's
    probe = (
        "import json, numpy as np\n"
        "from resnext_deploy import runtime\n"
        "from resnext_deploy.tensorrt.bundle import read_bundle\n"
        "b = read_bundle('.')\n"
        "with runtime.load('.', 'onnxruntime', 'int8') as clf:\n"
        "    preds = clf.predict(b.golden.inputs, top_k=1)\n"
        "    print(json.dumps({'artifact': clf.artifact.name, 'top1': [p.index for p in preds],\n"
        "                      'reference': [int(i) for i in np.argmax(b.golden.reference_qdq, 1)]}))\n"
    )
    probed = json.loads(_run(["python", "-c", probe], bundle_dir, env).stdout.strip().splitlines()[-1])
    if probed["top1"] != probed["reference"]:
        raise RehearsalError(f"Python {version}: top-1 on the device {probed['top1']} != the workstation's "
                             f"{probed['reference']} for {probed['artifact']}")
    # predict (the CLI) on the validation images the workstation evaluated: the same top-1 as its report's row
    manifest = json.loads((build_dir / "manifest.json").read_text())
    folder = Path(manifest["inputs"]["validation"]["folder"])
    images = sorted(p for p in folder.glob("*/*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    pred = _run(["resnext-deploy", "predict", "--build", ".", "--top-k", "1", "--json"] + [str(p) for p in images],
                bundle_dir, env)
    out = json.loads(pred.stdout)
    correct = sum(int(p["label"] == Path(p["source"]).parent.name) for p in out["predictions"])
    ws_row = next(r for r in json.loads((build_dir / "report.json").read_text())["results"] if r["artifact"] == out["artifact"])
    device_top1 = correct / len(images)
    if len(images) != ws_row["images"] or abs(device_top1 - ws_row["top1"]) > 1e-12:
        raise RehearsalError(f"Python {version}: predict's top-1 {device_top1:.4f} on {len(images)} images != the "
                             f"workstation report's {ws_row['top1']:.4f} on {ws_row['images']} for {out['artifact']}")
    if "no TensorRT engines yet" not in pred.stderr:
        raise RehearsalError(f"predict did not say the engines are pending: {pred.stderr}")
    if "Removing initializer" in pred.stderr:
        raise RehearsalError(f"ONNX Runtime warned about unused initializers: {pred.stderr[:500]}")
    t_device = time.perf_counter()
    # 4. back home: scp the report -> cp; merge with this (the workstation's) resnext-deploy; a tampered copy refused
    if not scp_back.startswith("scp "):
        raise RehearsalError(f"The report step is not a copy: {scp_back}")
    _run(["cp", str(bundle_dir / "report.json"), scp_back.split()[2]], station, env)
    ws_env = dict(os.environ)
    # the device's public key, pinned on the workstation (printed by compile --bundle on first use, and in .pub)
    pinned = (home / ".config" / "resnext-deploy" / "device-key.pub").read_text().strip()
    merged = _run(merge.replace("resnext-deploy", workstation_cli, 1) + f" --device-key {pinned}", station, ws_env,
                  expect=EXIT_PENDING_ON_DEVICE, shell=True)
    tampered = json.loads((bundle_dir / "report.json").read_text())
    row = next(r for r in tampered["results"] if r["artifact"] == "bundle-onnxruntime-qdq")
    row["max_abs_logit_diff"] = row["max_abs_logit_diff"] / 2  # a nicer number than the device measured
    (station / "tampered.json").write_text(json.dumps(tampered))
    refused = _run([workstation_cli, "report", ".", "--device", "tampered.json", "--device-key", pinned], station, ws_env,
                   expect=EXIT_BAD_INPUT)
    if "altered" not in refused.stderr:
        raise RehearsalError(f"The tampered device report was refused for another reason: {refused.stderr}")
    versions = json.loads(_run(["python", "-c", "import json, sys, numpy, onnxruntime; print(json.dumps({"
                                "'python': sys.version.split()[0], 'numpy': numpy.__version__, "
                                "'onnxruntime': onnxruntime.__version__}))"], home, env).stdout)
    return {"python": version, "versions": versions, "seconds": {
        "venv_and_pins": round(t_setup - t0, 1), "device_steps": round(t_device - t_setup, 1),
        "report_back": round(time.perf_counter() - t_device, 1), "total": round(time.perf_counter() - t0, 1)},
        "compile_exit": EXIT_PENDING_ON_DEVICE, "merge_exit": EXIT_PENDING_ON_DEVICE, "tampered_exit": EXIT_BAD_INPUT,
        "artifact": probed["artifact"], "golden_top1_equal": True, "compiled_as": first,
        "engine_plans": {k: {"engines": [e["name"] for e in p["engines"]], "lines": p["lines"]} for k, p in plans.items()}, "predict_top1": device_top1,
        "predict_images": len(images), "installed": device.returncode == 0,
        "compile_tail": compiled.stdout.strip().splitlines()[-3:], "merge_tail": merged.stdout.strip().splitlines()[-1:]}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build_dir", type=Path)
    ap.add_argument("--python", action="append", choices=PYTHONS, help="Pythons to rehearse (default: all three)")
    ap.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="Write the results here")
    args = ap.parse_args(argv)
    cli = shutil.which("resnext-deploy") or str(Path(sys.executable).parent / "resnext-deploy")
    work = args.work or Path(tempfile.mkdtemp(prefix="rehearse-"))
    results = []
    for version in args.python or PYTHONS:
        python = find_python(version)
        if python is None:
            results.append({"python": version, "skipped": f"no Python {version} (pyenv ~/.pyenv/versions/{version}.*)"})
        else:
            results.append(rehearse_one(version, python, args.build_dir.resolve(), work.resolve(), cli))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RehearsalError as exc:
        print(f"rehearsal FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
