"""Start or join the Ray cluster of a run: a local one with N one-CPU workers, or an existing one by address."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional

from ..errors import BadInputError
from ..optional import require

log = logging.getLogger(__name__)

#: the object store of a local cluster: shards in flight and the models, not the data set (it streams)
LOCAL_OBJECT_STORE_BYTES = 2 << 30


@dataclass
class Cluster:
    """The connected cluster: the ray module, how many actors a model gets, and whether we started it."""

    ray: ModuleType
    workers: int
    started: bool
    address: str
    #: the workers see the driver's files (a local cluster): they may decode images themselves
    shared_files: bool = False

    def nodes(self) -> List[Dict[str, Any]]:
        """The alive nodes (address and CPUs), for the report's provenance."""
        return [{"node_ip": n.get("NodeManagerAddress"), "cpus": n.get("Resources", {}).get("CPU", 0)}
                for n in self.ray.nodes() if n.get("Alive")]


def _package_root() -> str:
    import resnext_deploy

    return str(Path(resnext_deploy.__file__).resolve().parent.parent)


@contextlib.contextmanager
def connect(workers: int = 0, address: Optional[str] = None) -> Iterator[Cluster]:
    """A cluster for the block. ``address``: join it (``workers`` caps the actors, 0 = one per CPU); else start
    a local cluster of ``workers`` CPUs. A cluster already initialised in this process (a test's
    ``ray.cluster_utils.Cluster``) is used as it is and left running."""
    ray = require("ray", "run evaluation and sensitivity on a Ray cluster (--workers / --ray-address)")
    mine = False
    if not ray.is_initialized():
        mine = True
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                # The workers import the driver's resnext_deploy, not whatever another install put first.
                path = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH", "")) if p)
                ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                         object_store_memory=LOCAL_OBJECT_STORE_BYTES, runtime_env={"env_vars": {"PYTHONPATH": path}})
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at '{address}'" if address else f"a local Ray cluster of {workers} CPUs"
            raise BadInputError(f"Cannot start or reach {where}: {exc}. Check the address (ray status) or use --workers N.") from exc
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        n = workers or cpus
        if n <= 0:
            raise BadInputError(f"The Ray cluster at '{address or 'local'}' has no CPUs for workers.")
        log.info("ray: %d workers on %s (%d CPUs)", n, address or "a local cluster", cpus)
        local = not address and all(nd.get("NodeManagerAddress") == ray.util.get_node_ip_address()
                                    for nd in ray.nodes() if nd.get("Alive"))
        yield Cluster(ray, n, mine, address or "local", shared_files=local)
    finally:
        if mine:
            ray.shutdown()
