"""The hand-off to the device: the commands that copy, unpack and compile a bundle, and bring the report home.

The bundle README's template (templates/bundle_readme.md.j2) puts them in its device-steps block with the install
block between unpack and compile; the console after a Jetson build prints that rendered block (readme_steps), and
the CI rehearsal (tests/device/rehearse.py) runs its very lines (the copy as a local ``cp``: no device to scp to).
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
    unpack: List[str]  # in the home directory of the device: then the README's install block (its template) runs
    run: List[str]  # in the bundle, after the install block
    report_back: List[str]  # on the workstation, in the build directory


def device_steps(bundle: str, archive: str) -> DeviceSteps:
    """The commands for bundle folder ``bundle`` and tarball ``archive``; the install block between ``unpack`` and
    ``run`` is the README template's (from the manifest's ``bundle.install``: SHA256SUMS, then the pinned wheel).

    The workstation's commands run in the build directory, the device's in the directory the tarball was copied to.
    """
    return DeviceSteps(
        copy=f"scp {archive} {DEVICE_HOST}:",
        unpack=[f"tar xzf {archive}", f"cd {bundle}"],
        run=["resnext-deploy compile --bundle ."],
        report_back=[
            f"scp {DEVICE_HOST}:{bundle}/report.json device-report.json",
            "resnext-deploy report . --device device-report.json",
        ],
    )


def readme_steps(readme: str) -> List[str]:
    """The README's device-steps block as rendered, comments included: what the console prints after a build."""
    if BEGIN not in readme or END not in readme:
        return []
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    return [ln.rstrip() for ln in block.strip().splitlines() if ln.strip() and not ln.strip().startswith("```")]


def parse_readme_block(readme: str) -> List[str]:
    """The shell lines (comments dropped) of the README's device-steps block, as the rehearsal runs them."""
    return [ln.strip() for ln in readme_steps(readme) if not ln.strip().startswith("#")]
