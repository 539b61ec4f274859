"""Where shipped data lives: the repo's recipes/ (installed as resnext_deploy.recipe_files) and calibration/.

The demo and stand-in data (calibration/, ~55 MB) are not in the wheel. From a checkout (editable install or
not) they are the checkout's calibration/; from a wheel they are ``$RESNEXT_DEPLOY_DATA`` when set (point it at
a checkout's calibration/ folder), else ``~/.cache/resnext-deploy/data``, which `resnext-deploy demo train`
(and `demo standin`) fill by regenerating the data (needs the build extra: torch, scikit-learn).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DATA_ENV = "RESNEXT_DEPLOY_DATA"


def checkout_root() -> Path:
    return Path(__file__).resolve().parents[3]


def in_checkout() -> bool:
    """True when this module runs from a source checkout (pyproject.toml three levels up), editable or not."""
    return (checkout_root() / "pyproject.toml").is_file()


def data_dir() -> Path:
    """The folder holding digits/ and standin/: $RESNEXT_DEPLOY_DATA, the checkout's calibration/, or the user cache."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    if in_checkout() and (checkout_root() / "calibration").is_dir():
        return checkout_root() / "calibration"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "resnext-deploy" / "data"


def shipped_dir(package: str, repo_folder: str) -> Path:
    """``<repo>/<repo_folder>`` in a source checkout (editable installs too), else the folder of the installed ``package``.

    The checkout comes first so that a second work tree on the path reads its own recipes, not those the
    editable install mapped. Uses find_spec rather than importlib.resources.files (3.9+): the runtime runs on 3.8.
    """
    checkout = checkout_root() / repo_folder
    if in_checkout() and checkout.is_dir():
        return checkout
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return checkout
