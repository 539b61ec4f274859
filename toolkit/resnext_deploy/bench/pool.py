"""Worker processes: one per configuration, driven by JSON lines (see worker.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

from ..errors import BadInputError, InternalError

log = logging.getLogger(__name__)


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    # The worker imports this very package, also from a checkout that was never installed.
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Worker:
    """A ``python -m resnext_deploy.bench.worker`` child; ``call`` sends a command and waits for its reply."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resnext_deploy.bench.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1, env=_env(),
        )

    def call(self, op: str, **kwargs: Any) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise InternalError(f"The benchmark worker for {self.name} died during '{op}' (its log: {self.log_path}).")
        reply = json.loads(line)
        if not reply.get("ok"):
            log.debug("worker %s failed: %s", self.name, reply.get("traceback"))
            self.close()
            if reply.get("bad_input"):  # e.g. a model file refused by models/trust.py: the user's input, exit 2
                raise BadInputError(f"The benchmark worker for {self.name}: {reply['bad_input']}")
            raise InternalError(f"The benchmark worker for {self.name} failed during '{op}': {reply.get('error')} (log: {self.log_path}).")
        return reply

    def close(self) -> None:
        """Close its stdin (it exits) and wait for it."""
        if self.proc.returncode is None:
            for stream in (self.proc.stdin,):
                try:
                    stream.close()  # type: ignore[union-attr]
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        self.close()


def run_child(args: List[str], log_path: Path) -> Dict[str, Any]:
    """Run a command as a child, output to ``log_path``; its exit code, wall time and CPU time."""
    import resource
    import time

    log_path.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as logf:
        t = time.perf_counter()
        proc = subprocess.run(args, stdout=logf, stderr=subprocess.STDOUT, env=_env())
        wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # children's CPU times add up: the difference is this one's
    return {"exit_code": proc.returncode, "wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime, "log": str(log_path)}
