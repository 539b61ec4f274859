"""Ray workers' model copies (<tmp>/resnext-deploy-ray/<digest>-<pid>) are removed when the run ends, and those of
workers that died are removed by the next worker on the node (issue 19, finding 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from resnext_deploy.scale import blobs


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _copy(root: Path, pid: int, tag: str = "a") -> Path:
    d = root / f"{tag * 32}-{pid}"
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"m" * 100)
    return d


def test_dead_workers_copies_go_live_ones_stay(tmp_path, monkeypatch):
    monkeypatch.setattr(blobs, "node_cache", lambda: tmp_path / "resnext-deploy-ray")
    root = tmp_path / "resnext-deploy-ray"
    dead = _copy(root, _dead_pid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _copy(root, sleeper.pid, "b")
        other = root / "not-a-copy"
        other.mkdir()
        assert blobs.remove_dead_copies() == [dead]
        assert live.is_dir() and other.is_dir() and not dead.exists()
        assert blobs.remove_copies(sleeper.pid) == [live]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_last_copy_removes_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(blobs, "node_cache", lambda: tmp_path / "resnext-deploy-ray")
    mine = _copy(tmp_path / "resnext-deploy-ray", 4242424)
    assert blobs.remove_copies(4242424) == [mine]
    assert not (tmp_path / "resnext-deploy-ray").exists()


class _Echo:
    """What an actor builds: it only holds the verified local copy of the model."""

    def __init__(self, model) -> None:
        self.path = str(model.path)

    def where(self) -> str:
        return self.path


@pytest.mark.ray
def test_actor_group_removes_its_workers_copies_at_the_end(start_ray_cluster, tmp_path):
    pytest.importorskip("ray")
    from resnext_deploy.scale.actors import ActorGroup
    from resnext_deploy.scale.cluster import Cluster
    from resnext_deploy.scale.inference import ModelFiles

    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really a model, only bytes to copy" * 100)
    files = ModelFiles.of("m", "onnxruntime", model)
    with start_ray_cluster([None, None]):
        import ray

        cluster = Cluster(ray, 2, False, "local", shared_files=True)
        with ActorGroup(cluster, _Echo, [files], 2, "test") as group:
            paths = ray.get([a.call.remote("where") for a in group.actors])
            assert len(paths) == 2 and all(Path(p).is_file() for p in paths)  # one copy per worker, on this machine
        assert not any(Path(p).parent.exists() for p in paths)
