"""Where shipped data lives: the repo's recipes/ and calibration/, installed as resnext_deploy.recipes / .demo_data."""

from __future__ import annotations

from pathlib import Path


def shipped_dir(package: str, repo_folder: str) -> Path:
    """The folder of ``package`` when installed, else ``<repo>/<repo_folder>`` in a source checkout."""
    try:
        from importlib.resources import files

        path = files(package)
        # a namespace package's files() is a MultiplexedPath; str() of it is not a path, so probe a child
        probe = path / "__init__.py"
        if isinstance(probe, Path) and probe.parent.is_dir():
            return probe.parent
    except (ImportError, TypeError, ValueError):
        pass
    return Path(__file__).resolve().parents[2] / repo_folder
