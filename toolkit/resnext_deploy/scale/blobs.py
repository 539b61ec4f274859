"""Model files by content hash: the driver puts the bytes in Ray's object store, a worker writes and verifies them.

A worker keeps them in a folder of its own named by content (``<tmp>/resnext-deploy-ray/<model digest>-<pid>/``),
not one shared by the node's actors: ONNX Runtime's quantizer writes ``<model>-inferred.onnx`` beside the
model it reads, and two actors doing so in one folder read each other's half-written files. A file whose
bytes do not hash to what the driver recorded is refused, naming the node. The actor removes its folders when
the run ends (:func:`remove_copies`); folders of workers that died without doing so are removed by the next
worker on that node (:func:`remove_dead_copies`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Dict, List

from ..buildfolder.artifacts import pid_alive
from ..errors import ArtifactIntegrityError
from .inference import ModelFiles


def put_model(ray: Any, model: ModelFiles) -> Dict[str, Any]:
    """The model's files in the object store (refs and sha256), and what the worker needs to rebuild it."""
    return {"name": model.name, "backend": model.backend, "main": model.path.name, "settings": model.settings,
            "files": {p.name: (ray.put(p.read_bytes()), model.sha256[p.name]) for p in model.files}}


def node_cache() -> Path:
    return Path(tempfile.gettempdir()) / "resnext-deploy-ray"


_COPY = re.compile(r"^[0-9a-f]{32}-(\d+)$")


def remove_copies(pid: int) -> List[Path]:
    """Remove the model folders of worker process ``pid`` on this node; returns them."""
    gone = []
    root = node_cache()
    for d in root.iterdir() if root.is_dir() else []:
        m = _COPY.match(d.name)
        if m and int(m.group(1)) == pid:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    if root.is_dir() and not any(root.iterdir()):
        try:
            root.rmdir()
        except OSError:  # another worker made a folder meanwhile
            pass
    return gone


def remove_dead_copies() -> List[Path]:
    """Remove the model folders of worker processes that no longer run on this node (killed, crashed)."""
    root = node_cache()
    dead = {int(m.group(1)) for d in (root.iterdir() if root.is_dir() else []) for m in [_COPY.match(d.name)]
            if m and not pid_alive(int(m.group(1)))}
    return [p for pid in dead for p in remove_copies(pid)]


def fetch_model(ray: Any, blob: Dict[str, Any], where: str) -> ModelFiles:
    """On a worker: the model's files written locally, each verified against its sha256."""
    remove_dead_copies()
    hashes = {n: s for n, (_, s) in blob["files"].items()}
    # One folder per model (its files side by side: an OpenVINO .xml finds its .bin), named by content.
    digest = ModelFiles(blob["name"], blob["backend"], Path(blob["main"]), sha256=hashes).digest
    folder = node_cache() / f"{digest[:32]}-{os.getpid()}"
    paths = {}
    for name, (ref, sha) in blob["files"].items():
        path = folder / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            data = ray.get(ref)
            got = hashlib.sha256(data).hexdigest()
            if got != sha:
                raise ArtifactIntegrityError(
                    f"{where}: the file '{name}' of {blob['name']} arrived with sha256 {got[:12]}, not {sha[:12]} as "
                    "the driver recorded. Re-run; if it persists, check the node's disk and memory.")
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        paths[name] = path
    files = [paths[blob["main"]]] + [p for n, p in paths.items() if n != blob["main"]]
    return ModelFiles(blob["name"], blob["backend"], paths[blob["main"]], dict(blob["settings"]), files, hashes)
