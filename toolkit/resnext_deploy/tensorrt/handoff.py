"""The hand-off to the device: the commands that copy, unpack, install and compile a bundle, and bring the report home.

One source for the console after a Jetson build, the bundle README's opening, and the CI rehearsal
(tests/device/rehearse.py), which runs these very lines (the copy as a local ``cp``: there is no device to scp to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

#: marks the device steps' code block in the bundle README (the rehearsal reads the block between them)
BEGIN = "<!-- device-steps -->"
END = "<!-- /device-steps -->"
DEVICE_HOST = "<user>@<jetson>"


@dataclass
class DeviceSteps:
    copy: str  # on the workstation, in the build directory
    on_device: List[str]  # in the home directory of the device, in order
    report_back: List[str]  # on the workstation, in the build directory


def device_steps(bundle: str, archive: str, wheel: str) -> DeviceSteps:
    """The commands for bundle folder ``bundle``, tarball ``archive`` and the wheel ``wheels/<wheel>`` inside it.

    The workstation's commands run in the build directory, the device's in the directory the tarball was copied to.
    """
    return DeviceSteps(
        copy=f"scp {archive} {DEVICE_HOST}:",
        on_device=[
            f"tar xzf {archive}",
            f"cd {bundle}",
        ] + install_lines() + [
            "resnext-deploy compile --bundle .",
        ],
        report_back=[
            f"scp {DEVICE_HOST}:{bundle}/report.json device-report.json",
            "resnext-deploy report . --device device-report.json",
        ],
    )


def install_lines() -> List[str]:
    """Check every file, then install: the wheel by its sha256 only (bundle.write_install_files), its dependencies by name.

    A separate block so the README template can place it; pip's --require-hashes needs every package hash-pinned,
    dependencies included, so the wheel goes --no-deps and what it requires comes from dependencies.txt.
    """
    return ["sha256sum -c SHA256SUMS",
            "python3 -m pip install -r dependencies.txt",
            "python3 -m pip install --no-deps --require-hashes -r requirements.txt"]


def steps_lines(steps: DeviceSteps) -> List[str]:
    """The steps as shell lines with comments (the README block and the console print the same)."""
    return (["# 1. on the workstation, in the build directory: copy the bundle to the device", steps.copy,
             "# 2. on the device (JetPack's python3, or a venv made with --system-site-packages so JetPack's TensorRT",
             "#    stays visible): unpack, check every file's sha256, install resnext-deploy from the bundle's own wheel",
             "#    (pinned by its sha256), then build, check and sign the report with the device key",
             "#    (exit 0 all passed, 3 a check failed, 7 no TensorRT here: everything else passed, engines pending)"]
            + steps.on_device
            + ["# 3. on the workstation, in the build directory: bring the device report home and merge it into the build's report and gate"]
            + steps.report_back)


def readme_block(steps: DeviceSteps) -> List[str]:
    return [BEGIN, "```bash"] + steps_lines(steps) + ["```", END]


def parse_readme_block(readme: str) -> List[str]:
    """The shell lines (comments dropped) of the README's device-steps block, as the rehearsal runs them."""
    if BEGIN not in readme or END not in readme:
        return []
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith(("#", "```"))]
