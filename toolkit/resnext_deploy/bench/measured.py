"""``python -m resnext_deploy.bench.measured PEAK.json ARGS...``: run `resnext-deploy ARGS...` and, at exit,
write this process's peak RSS (VmHWM) to PEAK.json, so the benchmark knows the build's own peak memory."""

from __future__ import annotations

import atexit
import json
import sys


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]

    def record() -> None:
        from .worker import peak_rss_mb

        with open(out, "w") as f:
            json.dump({"peak_rss_mb": peak_rss_mb()}, f)

    atexit.register(record)
    from ..cli import main as cli_main

    sys.argv = ["resnext-deploy", *args]
    cli_main()


if __name__ == "__main__":
    main()
