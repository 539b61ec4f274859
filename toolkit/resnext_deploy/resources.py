"""Where shipped data lives: the repo's recipes/ and calibration/, installed as resnext_deploy.recipe_files / .demo_data."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def shipped_dir(package: str, repo_folder: str) -> Path:
    """``<repo>/<repo_folder>`` in a source checkout (editable installs too), else the folder of the installed ``package``.

    The checkout comes first so that a second work tree on the path reads its own recipes, not those the
    editable install mapped. Uses find_spec rather than importlib.resources.files (3.9+): the runtime runs on 3.8.
    """
    checkout = Path(__file__).resolve().parents[2] / repo_folder
    if (Path(__file__).resolve().parents[2] / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return checkout
