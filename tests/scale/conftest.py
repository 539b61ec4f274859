"""A local multi-node Ray cluster for the Ray tests: a head without CPUs and one-CPU nodes (separate raylets)."""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional

import pytest


@contextlib.contextmanager
def ray_cluster(node_env: List[Optional[Dict[str, str]]]) -> Iterator[object]:
    """One one-CPU node per entry of ``node_env`` (its raylet's extra environment, or None); connected, then shut down."""
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for env in node_env:
        c.add_node(num_cpus=1, **({"env_vars": env} if env else {}))
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="session")
def start_ray_cluster():
    """The helper above, for the test modules' own cluster fixtures (conftest is not importable under importlib mode)."""
    return ray_cluster
