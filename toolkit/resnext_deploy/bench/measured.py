"""``python -m resnext_deploy.bench.measured PEAK.json ARGS...``: run `resnext-deploy ARGS...` and, at exit,
write this process's peak RSS (VmHWM) to PEAK.json, so the benchmark knows the build's own peak memory."""

from __future__ import annotations

import atexit
import json
import runpy
import sys


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]

    def record() -> None:
        from .worker import peak_rss_mb

        with open(out, "w") as f:
            json.dump({"peak_rss_mb": peak_rss_mb()}, f)

    atexit.register(record)
    # run the CLI as `python -m resnext_deploy` would (a program, not a module bench/ builds on: cli.py sits above it)
    sys.argv = ["resnext-deploy", *args]
    runpy.run_module("resnext_deploy", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
