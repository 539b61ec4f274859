"""Actors: one per model per worker, built once (a session loaded once), fed shards, killed at the end.

Every actor is a :class:`Host` around an object of the caller's class (``factory(*args)``): arguments that
are :class:`ModelFiles` travel as content-addressed blobs and arrive as verified local files. A worker that
cannot build the object (a backend package missing on its node, a file that does not verify) reports
it with its node instead of dying, and the driver raises that error naming the worker. A worker that dies
mid-shard is restarted by Ray and its shard retried (``max_restarts`` / ``max_task_retries``), so the run
finishes with the same numbers.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from .. import errors
from ..errors import BadInputError, DeployError, InternalError
from .blobs import fetch_model, put_model, remove_copies
from .cluster import Cluster
from .inference import ModelFiles

log = logging.getLogger(__name__)

#: how often Ray rebuilds a dead actor and retries its tasks before the run fails
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 3
#: shards queued per actor: one running, one decoded and waiting, so a worker never waits for the driver
IN_FLIGHT = 2
#: seconds to wait for the actors to be placed and built (models loaded)
READY_TIMEOUT = 600.0

#: seconds the workers get to remove their model copies before they are killed
RELEASE_TIMEOUT = 30.0

_BLOB = "__resnext_deploy_model_blob__"


class Host:
    """The actor class: builds ``factory(*args)`` on the worker once, then runs its methods."""

    def __init__(self, factory: Callable[..., Any], *args: Any) -> None:
        import ray

        ctx = ray.get_runtime_context()
        self.where = {"node_ip": ray.util.get_node_ip_address(), "node_id": ctx.get_node_id(),
                      "host": socket.gethostname(), "pid": os.getpid()}
        self.error = None
        self.obj = None
        label = f"Ray worker {self.where['host']} (node {self.where['node_ip']}, id {self.where['node_id'][:12]}, pid {os.getpid()})"
        try:
            real = [fetch_model(ray, a[_BLOB], label) if isinstance(a, dict) and _BLOB in a else a for a in args]
            self.obj = factory(*real)
        except DeployError as exc:
            self.error = {"type": type(exc).__name__, "message": str(exc), "worker": label}

    def ready(self) -> Dict[str, Any]:
        import resnext_deploy

        return {**self.where, "error": self.error, "version": resnext_deploy.__version__}

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.obj, method)(*args)

    def release(self) -> int:
        """Drop the object and remove this worker's model copies (the run is over); returns how many."""
        self.obj = None
        return len(remove_copies(os.getpid()))


def _raise_worker_error(state: Dict[str, Any]) -> None:
    err = state["error"]
    cls = getattr(errors, err["type"], None)
    if not (isinstance(cls, type) and issubclass(cls, DeployError)):
        cls = InternalError
    raise cls(f"{err['worker']}: {err['message']}")


class ActorGroup:
    """``n`` actors of ``factory(*args)`` on the cluster, one CPU each; a context manager that kills them on exit."""

    def __init__(self, cluster: Cluster, factory: Callable[..., Any], args: Sequence[Any], n: int, label: str) -> None:
        ray = self.ray = cluster.ray
        self.label = label
        wired = [{_BLOB: put_model(ray, a)} if isinstance(a, ModelFiles) else (ray.put(a) if isinstance(a, np.ndarray) else a)
                 for a in args]
        remote = ray.remote(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)(Host)
        self._wired = wired  # held for the group's life: a restarted actor is rebuilt from these refs
        self.actors = [remote.remote(factory, *wired) for _ in range(max(1, n))]
        try:
            states = ray.get([a.ready.remote() for a in self.actors], timeout=READY_TIMEOUT)
        except ray.exceptions.GetTimeoutError as exc:
            self.close()
            raise BadInputError(
                f"{label}: {len(self.actors)} Ray workers of 1 CPU could not be placed and started within "
                f"{READY_TIMEOUT:.0f} s (cluster CPUs: {ray.cluster_resources().get('CPU', 0)}). Use fewer --workers.") from exc
        except ray.exceptions.RayError as exc:
            self.close()
            raise InternalError(f"{label}: a Ray worker failed while starting: {exc}") from exc
        self.states = states
        import resnext_deploy

        for st in states:
            if st["error"]:
                self.close()
                _raise_worker_error(st)
            if st["version"] != resnext_deploy.__version__:
                self.close()
                raise BadInputError(f"{label}: the Ray worker on {st['host']} ({st['node_ip']}) runs resnext-deploy "
                                    f"{st['version']}, this driver {resnext_deploy.__version__}. Install the same version on every node.")

    def nodes(self) -> List[str]:
        return sorted({f"{s['host']} ({s['node_ip']})" for s in self.states})

    def run(self, method: str, jobs: Iterable[Tuple[Any, Callable[[], Tuple[Any, ...]]]],
            on_done: Callable[[Any, Any], None]) -> None:
        """Run ``method(*make())`` for each (key, make) job on the actors, ``IN_FLIGHT`` per actor; ``make`` is
        called only when a slot frees, so the driver never holds more than the shards in flight."""
        ray = self.ray
        slots = deque(i for _ in range(IN_FLIGHT) for i in range(len(self.actors)))  # round robin
        pending: Dict[Any, Tuple[int, Any]] = {}
        it = iter(jobs)
        exhausted = False
        while True:
            while slots and not exhausted:
                job = next(it, None)
                if job is None:
                    exhausted = True
                    break
                i = slots.popleft()
                key, make = job
                pending[self.actors[i].call.remote(method, *make())] = (i, key)
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            i, key = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except DeployError:  # ours, raised on the worker (Ray's error is also an instance of the cause)
                raise
            except ray.exceptions.RayError as exc:
                raise InternalError(f"{self.label}: a shard failed on a Ray worker after {MAX_TASK_RETRIES} retries: {exc}") from exc
            slots.append(i)
            on_done(key, result)

    def close(self) -> None:
        if self.actors:  # each worker removes its model copies; one that does not answer is cleaned up later
            try:
                self.ray.get([a.release.remote() for a in self.actors], timeout=RELEASE_TIMEOUT)
            except Exception as exc:  # a dead or hung worker: the next worker on its node removes its folder
                log.debug("a Ray worker did not release its model copies: %s", exc)
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # already gone: nothing to free
                pass
        self.actors = []

    def __enter__(self) -> "ActorGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
