"""The `resnext-deploy` command: parses, calls the library, prints. Decisions live in the library.

Exit codes: 0 ok, 2 bad input/usage, 3 gate failed, 4 internal error, 5 missing package.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import click

from .errors import EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_OK, DeployError

log = logging.getLogger("resnext_deploy")


class _Progress:
    """Draws `stage: done/total` on one stderr line; library code calls it, only the CLI draws."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 24
        filled = int(width * done / max(total, 1))
        click.echo(f"\r  {stage:<36} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", nl=False, err=True)
        if done >= total:
            click.echo("", err=True)


def _run(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors into a one-paragraph message and their exit code; anything else is internal (4)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DeployError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug: say so, keep the traceback for --verbose
            log.debug("internal error", exc_info=True)
            click.echo(
                f"internal error: {type(exc).__name__}: {exc}. This is a bug in resnext-deploy or a backend; "
                "rerun with --verbose for the traceback and report it.",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every step (and tracebacks of internal errors).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.version_option(package_name="resnext-deploy")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Take a trained ResNeXt from PyTorch to edge devices: ONNX, INT8, OpenVINO, ONNX Runtime, TensorRT.

    Exit codes: 0 ok, 2 bad input or usage, 3 a gate failed, 4 internal error, 5 missing package.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"progress": _Progress(not quiet and sys.stderr.isatty() or verbose)}


def _model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--num-classes", type=int, default=None, help="Classes of the model (default: from the checkpoint's fc).")(fn)
    fn = click.option("--arch", default=None, help="Architecture of a state_dict: resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, resnext_demo.")(fn)
    fn = click.option("--model", "model", type=click.Path(path_type=Path), default=None,
                      help="Checkpoint (state_dict, checkpoint dict, pickled module, TorchScript) or ONNX file. Default: the shipped demo.")(fn)
    return fn


@cli.command()
@_model_options
@click.option("--target", default="x86-cpu", show_default=True, help="Target device class (see `resnext-deploy targets`).")
@click.option("--recipe", type=click.Path(path_type=Path), default=None, help="Your own recipe TOML (overrides --target's).")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration images (any layout). Default: the recipe's, else the demo's.")
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Labeled validation images, ImageFolder layout.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Build directory (default build/<model>/<target>).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the table.")
@click.pass_context
@_run
def build(ctx: click.Context, model: Optional[Path], arch: Optional[str], num_classes: Optional[int], target: str,
          recipe: Optional[Path], calib: Optional[Path], val: Optional[Path], out: Optional[Path], as_json: bool) -> None:
    """Run the whole pipeline and gate it; writes one build directory."""
    from .build import build as run_build
    from .report import render_table

    res = run_build(model, target, recipe, out, arch, num_classes, calib, val, ctx.obj["progress"])
    click.echo(json.dumps(res.report, indent=2) if as_json else render_table(res.report))
    click.echo(f"\nbuild directory: {res.out_dir}")
    sys.exit(EXIT_OK if res.passed else EXIT_GATE_FAILED)


@cli.command()
def targets() -> None:
    """List the targets and their recipes."""
    from .recipes import list_targets, load_recipe

    for name, path in list_targets().items():
        r = load_recipe(path)
        builds = ", ".join(f"{b}:{'+'.join(r.backend(b)['precisions'])}" for b in r.enabled_backends())
        click.echo(f"{name:<18} {builds:<44} {r.data['description']}")
        click.echo(f"{'':<18} recipe: {path}")


def main() -> None:
    cli(prog_name="resnext-deploy")
