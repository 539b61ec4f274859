"""Where shipped data lives: the repo's recipes/ and calibration/, installed as resnext_deploy.recipe_files / .demo_data."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def shipped_dir(package: str, repo_folder: str) -> Path:
    """The folder of ``package`` when installed, else ``<repo>/<repo_folder>`` in a source checkout.

    Uses find_spec rather than importlib.resources.files (3.9+): the on-device runtime runs on 3.8.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return Path(__file__).resolve().parents[2] / repo_folder
