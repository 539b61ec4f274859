"""The `resnext-deploy` command: parses, calls the library, prints. Decisions live in the library.

Exit codes: 0 ok, 2 bad input/usage, 3 gate failed, 4 internal error, 5 missing package, 6 out of a resource
(disk full, quota, read-only), 7 pending on device, 130 SIGINT, 143 SIGTERM (see errors.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import click

from . import backends
from .names import shown
from .errors import (EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_PENDING_ON_DEVICE, EXIT_TERMINATED,
                     DeployError, Terminated)

log = logging.getLogger("resnext_deploy")


def _say(text: Any = "", **kwargs: Any) -> None:
    """click.echo with every control character of the text escaped but line breaks and tabs (names.shown): a folder
    name holding an OSC 52 (clipboard) or cursor escape is printed as text, never sent to the terminal raw."""
    click.echo("\n".join("\t".join(shown(cell) for cell in line.split("\t")) for line in str(text).split("\n")), **kwargs)


class _ShownFormatter(logging.Formatter):
    """Log lines on the console with names escaped like :func:`_say`'s."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(shown(line) for line in super().format(record).split("\n"))


def _run(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors into a one-paragraph message and their exit code; anything else is internal (4)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_raises():
                return fn(*args, **kwargs)
        except DeployError as exc:
            _say(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            _say("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Terminated:
            _say("terminated (SIGTERM)", err=True)
            sys.exit(EXIT_TERMINATED)
        except BrokenPipeError:  # `resnext-deploy ... | head`: the reader left; not an error of ours
            # Python's own advice: point stdout at devnull so the flush at exit does not raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_OK)
        except Exception as exc:  # a bug: say so, keep the traceback for --verbose
            from .buildfolder.artifacts import is_resource_error, resource_error

            if is_resource_error(exc):  # disk full / quota / read-only outside an atomic writer: not a bug
                err = resource_error(exc, None)  # type: ignore[arg-type]
                _say(f"error: {err}", err=True)
                sys.exit(err.exit_code)
            log.debug("internal error", exc_info=True)
            _say(
                f"internal error: {type(exc).__name__}: {exc}. This is a bug in resnext-deploy or a backend; "
                "rerun with --verbose for the traceback and report it.",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` in the main thread (as SIGINT raises
    KeyboardInterrupt), so staging folders are removed on the way out; a second SIGTERM during that cleanup
    is ignored. The previous handler is restored afterwards (the CLI may run inside a test or an application)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every step (and tracebacks of internal errors).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.version_option(package_name="resnext-deploy")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Take a trained ResNeXt from PyTorch to edge devices: ONNX, INT8, OpenVINO, ONNX Runtime, TensorRT.

    Exit codes: 0 ok, 2 bad input or usage, 3 a gate failed, 4 internal error, 5 missing package, 6 disk full/quota/
    read-only, 7 pending on device, 130 SIGINT, 143 SIGTERM.
    """
    console = logging.StreamHandler()
    console.setFormatter(_ShownFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[console])
    from .progress import ProgressDisplay

    # Bars on a terminal; on a CI log or a file, a line per stage and per 10 % (never silent for minutes).
    ctx.obj = {"progress": ProgressDisplay(enabled=not quiet)}


def _scale_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--workers / --ray-address: the one switch that puts the logits on Ray workers (see README, Scale)."""
    fn = click.option("--ray-address", default=None, metavar="ADDR",
                      help="Run the accuracy work on this existing Ray cluster (e.g. 10.0.0.5:6379, or 'auto').")(fn)
    fn = click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                      help="Shard the accuracy work over N Ray workers of one CPU on a local cluster started for the run "
                           "(0: this process). Needs the [scale] extra. Latency is always measured in this process.")(fn)
    return fn


def _scale(workers: int, ray_address: Optional[str], resume: Optional[Path] = None) -> Any:
    from .scale import ScaleOptions

    return ScaleOptions(workers=workers, address=ray_address, resume=resume)


_trust_opt = click.option(
    "--trust-pickle", is_flag=True,
    help="Load a model file that runs code while it loads (a whole pickled module, Python objects in a checkpoint, a "
         "Keras Lambda layer or custom object). That code runs with your permissions: only for files you made or trust. "
         "Default: refused (exit 2).")


def _model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = _trust_opt(fn)
    fn = click.option("--num-classes", type=int, default=None, help="Classes of the model (default: from the checkpoint's fc).")(fn)
    fn = click.option("--arch", default=None, help="Architecture of a state_dict: resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, resnext_demo.")(fn)
    fn = click.option("--model", "model", cls=_ModelOption, type=click.Path(path_type=Path), default=None,
                      help="The model, its format told from its bytes.")(fn)
    return fn


class _ModelOption(click.Option):
    """--model, whose help lists every format plug-in's own line: read when the help is shown, so that starting the
    CLI imports no format (on the device `compile --bundle` runs with numpy alone)."""

    def get_help_record(self, ctx: click.Context) -> Any:
        from .models.formats import help_text

        self.help = "The model, its format told from its bytes: " + help_text()
        return super().get_help_record(ctx)


_force_opt = click.option(
    "--force", is_flag=True,
    help="Replace --out even when it is not a previous output of resnext-deploy (a folder of other files, a file, a "
         "symbolic link). Without it such an --out is refused (exit 2): see README, Output folders.")


def _ci_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--summary", "summary_file", type=click.Path(path_type=Path), default=None,
                      help="Write the parity table and the gate as Markdown (a CI job summary). With GITHUB_STEP_SUMMARY "
                           "set it is also appended there.")(fn)
    fn = click.option("--junit", "junit_file", type=click.Path(path_type=Path), default=None,
                      help="Write the gate as JUnit XML: a testsuite per artifact, a testcase per check.")(fn)
    return fn


def _write_ci(report: Any, junit_file: Optional[Path], summary_file: Optional[Path]) -> None:
    """--junit / --summary, and GitHub's job summary where GITHUB_STEP_SUMMARY is set."""
    from .ci.outputs import write_ci_outputs

    step = os.environ.get("GITHUB_STEP_SUMMARY") or None
    for path in write_ci_outputs(report, junit_file, summary_file, step):
        if step is None or str(path) != step:
            _say(f"wrote {path}", err=True)  # stderr: --json keeps stdout to the JSON


@cli.command()
@_model_options
@click.option("--target", default="x86-cpu", show_default=True, help="Target device class (see `resnext-deploy targets`).")
@click.option("--recipe", type=click.Path(path_type=Path), default=None,
              help="Your own recipe TOML: layered over the recipe it `extends`, or over --target's when --target is given.")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration images (any layout). Default: the recipe's, else the demo's.")
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Labeled validation images, ImageFolder layout.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Build directory (default build/<model>/<target>).")
@_force_opt
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the table.")
@click.option("--sensitivity", is_flag=True, default=None,
              help="Rank the layers by INT8 sensitivity and report it even when the gate passes (a failed gate always does).")
@click.option("--preprocessing", "preprocessing", default=None, metavar="PRESET|FILE.json",
              help="How the model sees images, for a model that does not say (a Keras file without a sidecar): a preset "
                   "(imagenet, keras-caffe, keras-tf, keras-torch) or a JSON file.")
@click.option("--sign-key", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="The workstation's Ed25519 key (made by `resnext-deploy device-key --key FILE`): signs a TensorRT "
                   "bundle's manifest, which a device that pins its public key verifies before using it.")
@_ci_options
@_scale_options
@click.pass_context
@_run
def build(ctx: click.Context, model: Optional[Path], arch: Optional[str], num_classes: Optional[int], trust_pickle: bool, target: str,
          recipe: Optional[Path], calib: Optional[Path], val: Optional[Path], out: Optional[Path], as_json: bool,
          sensitivity: Optional[bool], preprocessing: Optional[str], sign_key: Optional[Path], junit_file: Optional[Path],
          summary_file: Optional[Path], workers: int, ray_address: Optional[str], force: bool) -> None:
    """Run the whole pipeline and gate it; writes one build directory."""
    from .pipeline.build import BuildOptions, build as run_build
    from .report import render_table

    options = BuildOptions(model, _given_target(target) if recipe else target, recipe, out, arch, num_classes, calib, val,
                           sensitivity, _scale(workers, ray_address), preprocessing, trust_pickle, force,
                           sign_key)
    res = run_build(options, ctx.obj["progress"])
    _say(json.dumps(res.report, indent=2) if as_json else render_table(res.report))
    if not as_json and res.report.get("calibration_check"):
        from .pipeline.calibration_check import summary_line

        _say(summary_line(res.report["calibration_check"]))
    fb = res.report.get("fallback")
    if fb and not as_json:
        _say(f"fallback: {len(fb['excluded'])} layers left in float: {', '.join(fb['excluded'])}" if fb["passed"]
                   else f"fallback: no list of up to {fb['max_excluded_layers']} layers in float passed (see report.md)")
    _say(f"\nbuild directory: {res.out_dir}")
    steps = (res.report.get("bundle") or {}).get("device_steps")
    if steps and not as_json:  # a Jetson (or GPU) build without TensorRT here: the hand-off (tensorrt/handoff.py)
        b = res.report["bundle"]
        signed = f"; manifest signed by workstation key {b['manifest_signed_by']}" if b.get("manifest_signed_by") else ""
        _say(f"bundle: {Path(res.out_dir) / b['directory']}/ (wheel {b['wheel']}{signed})\ntarball: {Path(res.out_dir) / b['archive']}"
             f"\ntarball sha256: {b['archive_sha256']} (on the device, `sha256sum {b['archive']}` must print it)"
             f"\nnext steps (also at the top of the bundle's README.md):\n  cd {res.out_dir}\n"
             + "\n".join(f"  {line}" for line in steps))
    _write_ci(res.report, junit_file, summary_file)
    sys.exit(EXIT_OK if res.passed else EXIT_GATE_FAILED)


@cli.command()
def targets() -> None:
    """List the targets and their recipes."""
    from .recipes import list_targets, load_recipe
    from .tensorrt.platforms import target_summary

    for name, path in list_targets().items():
        r = load_recipe(path)
        builds = ", ".join(f"{b}:{'+'.join(r.backend(b)['precisions'])}" for b in r.enabled_backends())
        _say(f"{name:<18} {builds:<44} {r.data['description']}")
        for row in target_summary(name):  # JetPack / TensorRT / CUDA / Python / DLA the target can meet
            _say(f"{'':<18} {row}")
        _say(f"{'':<18} recipe: {path}")


def _given_target(target: Optional[str]) -> Optional[str]:
    """--target when the user gave it (a --recipe then goes over that target's recipe), else None."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    given = ctx is not None and ctx.get_parameter_source("target") in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return target if given else None


def _recipe(target: Optional[str], recipe: Optional[Path]) -> Any:
    from .recipes import load_recipe

    return load_recipe(recipe, _given_target(target) if recipe else target)


def _build_recipe(manifest: Dict[str, Any], target: str) -> Any:
    """The recipe a build recorded in its manifest (resolved: the gates it was built under), else --target's."""
    from .recipes import Recipe, load_recipe

    if isinstance(manifest.get("recipe"), dict) and manifest["recipe"].get("gates"):
        return Recipe(manifest["recipe"], f"the recipe recorded in the build's manifest ({manifest.get('recipe_source')})")
    return load_recipe(None, manifest.get("target") or target)


_target_opt = click.option("--target", default="x86-cpu", show_default=True, help="Target whose recipe supplies the settings.")
_recipe_opt = click.option("--recipe", type=click.Path(path_type=Path), default=None,
                           help="Your own recipe TOML (layered over the one it `extends`, or over --target's when given).")
_size_opt = click.option("--input-size", type=int, default=None,
                         help="Crop size, with --preprocessing imagenet or the recipe's [preprocess], for an ONNX whose input shape is dynamic.")


_preprocessing_opt = click.option(
    "--preprocessing", "preprocessing", default=None, metavar="PRESET|FILE.json",
    help="How the model sees images when the model file does not say (an ONNX without sidecar or build, a Keras file "
         "without sidecar): a preset, 'imagenet' (ImageNet's mean/std, resize 256/224 of the crop), 'keras-caffe' "
         "(BGR minus the ImageNet mean, 0..255), 'keras-tf' ([-1, 1]), 'keras-torch' (ImageNet mean/std), or a JSON file (a build's manifest.json, a sidecar, or a dict of "
         "resize, crop, mean, std).")


@cli.command()
@_model_options
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@_run
def check(model: Optional[Path], arch: Optional[str], num_classes: Optional[int], trust_pickle: bool, as_json: bool) -> None:
    """Lint a model before export: residual adds of unequal shapes, grouped convs whose channels don't divide."""
    from .pipeline.commands import check_file

    res = check_file(model, arch, num_classes, allow_pickle=trust_pickle)
    _say(json.dumps(res, indent=2) if as_json else res.get("summary", f"{res['model']}: passed {', '.join(res.get('checks', []))}"))


@cli.command()
@_model_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The ONNX file to write.")
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Real images for the numeric check against PyTorch.")
@_target_opt
@_recipe_opt
@_preprocessing_opt
@_run
def export(model: Optional[Path], arch: Optional[str], num_classes: Optional[int], trust_pickle: bool, out: Path,
           calib: Optional[Path], target: str, recipe: Optional[Path], preprocessing: Optional[str]) -> None:
    """Check, export to ONNX (opset >= 17, dynamic batch), simplify, and compare with PyTorch (or Keras)."""
    from .pipeline.commands import export_file

    art = export_file(model, out, arch, num_classes, calib, _recipe(target, recipe), preprocessing, trust_pickle)
    what = art.settings["compared_with"]  # the format's framework (models/formats/)
    diff = art.settings[f"max_abs_diff_vs_{what}"]
    _say(f"wrote {art.path} (max |onnx - {what}| = {diff:.3g}, sha256 {art.sha256[:12]})")


@cli.command()
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), required=True, help="FP32 ONNX model.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The Q/DQ ONNX file to write.")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Calibration images (default: the recipe's, else the ones the ONNX's build used; the demo's only for the demo).")
@click.option("--activations", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True,
              help="uint8 for ONNX Runtime's CPU kernels; int8 (symmetric, zero-point 0) for TensorRT.")
@_size_opt
@_preprocessing_opt
@_target_opt
@_recipe_opt
@click.pass_context
@_run
def quantize(ctx: click.Context, onnx_path: Path, out: Path, calib: Optional[Path], activations: str,
             input_size: Optional[int], preprocessing: Optional[str], target: str, recipe: Optional[Path]) -> None:
    """Calibrate and quantize to an INT8 Q/DQ ONNX (method, count and seed from the recipe).

    Preprocessing and the default calibration folder come from the ONNX's sidecar or the manifest.json of the
    build it sits in; an ONNX with neither needs --preprocessing (and --calib)."""
    from .pipeline.commands import quantize_file

    art = quantize_file(onnx_path, out, calib, _recipe(target, recipe), activations, input_size, ctx.obj["progress"],
                        preprocessing=preprocessing)
    _say(f"wrote {art.path} ({art.settings['calibration_method']}, {art.settings['calibration_images']} images, {activations} activations)")


@cli.command(name="compile")
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), default=None, help="FP32 ONNX, or a Q/DQ ONNX for int8.")
@click.option("--backend", type=click.Choice(backends.names()), default=None)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None, help="fp16: TensorRT only; bf16: OpenVINO (FP32 IR, bf16 hint).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="On the device: build, check and time the engines of a TensorRT bundle (made by `build --target jetson-*`).")
@click.option("--key", "key_file", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="With --bundle: the device's private key that signs report.json (default $RESNEXT_DEPLOY_DEVICE_KEY, "
                   "else ~/.config/resnext-deploy/device-key, made on first use).")
@click.option("--workstation-key", default=None, metavar="KEY|FILE",
              help="With --bundle: the workstation's public key; the bundle's manifest must carry its signature "
                   "(default: ~/.config/resnext-deploy/workstation-key.pub when it exists, else not checked).")
@_target_opt
@_recipe_opt
@_ci_options
@click.pass_context
@_run
def compile_cmd(ctx: click.Context, onnx_path: Optional[Path], backend: Optional[str], precision: Optional[str],
                out: Optional[Path], bundle: Optional[Path], key_file: Optional[Path], workstation_key: Optional[str],
                target: str, recipe: Optional[Path], junit_file: Optional[Path], summary_file: Optional[Path]) -> None:
    """Compile an ONNX into a backend's artifact (OpenVINO IR, ONNX Runtime optimized model, TensorRT engine).

    With --bundle DIR (on the Jetson or GPU machine): build the bundle's TensorRT engines, compare them with the
    golden outputs under the recipe's tolerances, time them, write report.json/.md; exit 3 if a check fails.
    Without TensorRT: verify the bundle, check its ONNX models on the golden inputs with ONNX Runtime, write a
    report saying the engines were not built; exit 7 when all that passed.
    """
    if bundle is not None:
        if any(v is not None for v in (onnx_path, backend, precision, out)):
            raise click.UsageError("--bundle takes no --onnx/--backend/--precision/--out: the bundle's recipe says what to build.")
        from .report import render_table
        from .tensorrt.ondevice import compile_bundle

        res = compile_bundle(bundle, ctx.obj["progress"], key_file=key_file, workstation_key=workstation_key)
        _say(render_table(res.report))
        for line in (res.report.get("engine_plan") or {}).get("lines", []):  # --target jetson: what this device builds
            _say(line)
        _say(_device_signature_lines(res))
        if res.pending:
            _say(f"\nTensorRT engines NOT built: {res.pending}. Checked without TensorRT: the bundle's hashes and "
                       "its ONNX models on the golden inputs (ONNX Runtime).")
        _say(f"\nengines: {', '.join(str(p) for p in res.engines) or 'none'}\nreport: {res.bundle / 'report.md'}")
        _write_ci(res.report, junit_file, summary_file)
        sys.exit(EXIT_GATE_FAILED if not res.passed else EXIT_PENDING_ON_DEVICE if res.pending else EXIT_OK)
    if key_file or workstation_key:
        raise click.UsageError("--key/--workstation-key go with --bundle (signing the device report).")
    if junit_file or summary_file:
        raise click.UsageError("--junit/--summary go with --bundle (a gate to report); compiling one artifact has no gate.")
    missing = [n for n, v in (("--onnx", onnx_path), ("--backend", backend), ("--precision", precision), ("--out", out)) if v is None]
    if missing:
        raise click.UsageError(f"compile needs {', '.join(missing)} (or --bundle DIR on the device).")
    if precision not in backends.get(backend).precisions:
        builds = ", ".join(backends.get(backend).precisions)
        raise click.UsageError(f"--precision {precision}: {backend} compiles {builds}.")
    from .pipeline.commands import compile_file

    art = compile_file(onnx_path, backend, precision, out, _recipe(target, recipe))
    _say(f"wrote {art.path} ({art.backend} {art.precision})")


@cli.command()
@click.argument("artifacts", nargs=-1, type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), required=True, help="The FP32 ONNX everything is compared with.")
@click.option("--val", type=click.Path(path_type=Path), default=None,
              help="Labeled images, ImageFolder layout (default: the recipe's, else the ones the reference's build used; the demo's only for the demo).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the evaluation JSON here (input of `report`).")
@click.option("--resume", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Keep each shard's logits in DIR (keyed by model sha256 and image list); a re-run resumes from them.")
@_scale_options
@_size_opt
@_preprocessing_opt
@_target_opt
@_recipe_opt
@click.pass_context
@_run
def evaluate(ctx: click.Context, artifacts: tuple, reference: Path, val: Optional[Path], out: Optional[Path],
             resume: Optional[Path], workers: int, ray_address: Optional[str],
             input_size: Optional[int], preprocessing: Optional[str], target: str, recipe: Optional[Path]) -> None:
    """Accuracy, agreement, logit error, latency and size of artifacts (by path) on the same images.

    Preprocessing, names and the default validation folder come from each file's sidecar or the manifest.json
    of the build it sits in, so a build's artifacts give the build's numbers."""
    from .pipeline.commands import evaluate_files
    from .report import render_table

    ev = evaluate_files(reference, artifacts, val, _recipe(target, recipe), input_size, out, ctx.obj["progress"],
                        preprocessing=preprocessing, scale=_scale(workers, ray_address, resume))
    _say(render_table(ev, with_gate=False))
    if out:
        _say(f"wrote {out}")


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Directory for report.json/report.md.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the table.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="A previous build (directory, or report.json with its manifest.json) to compare with, artifact by "
                   "artifact, under the recipe's [gates.baseline]; exit 3 if a check against it fails.")
@click.option("--device", "device_report", type=click.Path(path_type=Path), default=None,
              help="The report.json `compile --bundle` wrote on the device: verified and merged into the build "
                   "directory SOURCE (its report, gate and manifest); exit 7 while engines are still pending.")
@click.option("--device-key", default=None, metavar="KEY|FILE",
              help="With --device: the device's public key (`resnext-deploy device-key` prints it on the device); only "
                   "a report it signed is merged. Default: the recipe's [signing] device_key.")
@_target_opt
@_recipe_opt
@_ci_options
@_run
def report(source: Path, out: Optional[Path], as_json: bool, baseline: Optional[Path], device_report: Optional[Path],
           device_key: Optional[str], target: str, recipe: Optional[Path], junit_file: Optional[Path],
           summary_file: Optional[Path]) -> None:
    """Gate an evaluation JSON (or re-gate a build directory) with the recipe, compare with --baseline; exit 3 if a check fails.

    With --device: merge the device's report into the build SOURCE (a report from another bundle is refused)."""
    from .ci.baseline import baseline_passed, baseline_summary
    from .pipeline.commands import report_from
    from .report import render_table

    if device_report is not None:
        from .ci.device import engines_pending, merge_device_report
        from .buildfolder.manifest import read_manifest

        if baseline is not None or out is not None:
            raise click.UsageError("--device merges into the build directory itself: no --out or --baseline with it.")
        manifest = read_manifest(Path(source) / "manifest.json") if Path(source).is_dir() else {}
        # the build's own recipe (resolved in its manifest) unless the user names one
        rec = _recipe(target, recipe) if (recipe or _given_target(target)) else _build_recipe(manifest, target)
        rep = merge_device_report(source, device_report, rec, device_key)
        _say(json.dumps(rep, indent=2) if as_json else render_table(rep))
        _say(f"\nmerged {device_report} (signed by device key {rep['device']['signed_by']}) into {source}: "
             "report.json, report.md, manifest.json, device-report.json", err=as_json)
        _write_ci(rep, junit_file, summary_file)
        sys.exit(EXIT_GATE_FAILED if not rep["gate"]["passed"] else EXIT_PENDING_ON_DEVICE if engines_pending(rep) else EXIT_OK)
    if device_key is not None:
        raise click.UsageError("--device-key goes with --device (the key that must have signed the device report).")
    rep = report_from(source, _recipe(target, recipe), out, baseline)
    _say(json.dumps(rep, indent=2) if as_json else render_table(rep))
    if rep.get("baseline") and not as_json:
        _say(baseline_summary(rep["baseline"]))
    _write_ci(rep, junit_file, summary_file)
    sys.exit(EXIT_OK if rep["gate"]["passed"] and baseline_passed(rep) else EXIT_GATE_FAILED)


def _device_signature_lines(res: Any) -> str:
    """compile --bundle: which key signed the report (and, the first time, how to pin it on the workstation)."""
    key = res.signed_by
    lines = [f"report.json signed by device key {key.key_id}"
             + (f"; bundle manifest signed by the pinned workstation key {res.bundle_signed_by}" if res.bundle_signed_by
                else "; bundle manifest signature not checked (no workstation key pinned here)")]
    if res.key_created:
        lines.append(f"made a new device key: {key.key_id}, public key {key.text} (the private key stays on this "
                     "device, mode 0600). Pin the public key on the workstation: `resnext-deploy report BUILD --device "
                     f"report.json --device-key {key.text}` or [signing] device_key in the recipe.")
    return "\n".join(lines)


@cli.command("device-key")
@click.option("--key", "key_file", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="The private key file (default $RESNEXT_DEPLOY_DEVICE_KEY, else ~/.config/resnext-deploy/device-key).")
@_run
def device_key(key_file: Optional[Path]) -> None:
    """Show this machine's Ed25519 signing key, making it (mode 0600) if there is none.

    On the device it signs compile --bundle's reports: pin the printed public key on the workstation
    (`report --device ... --device-key KEY` or [signing] device_key). With --key FILE on the workstation it makes the
    key `build --sign-key FILE` signs bundles with; the device pins that public key (compile --bundle --workstation-key)."""
    from .buildfolder.signing import device_key_path, load_or_create_key

    key, created = load_or_create_key(device_key_path(key_file))
    _say(f"{'made' if created else 'key'}: {key.path} (private, mode 0600)\nkey id: {key.public.key_id}\n"
         f"public key: {key.public.text}")


@cli.group()
def demo() -> None:
    """The offline demo: a compact ResNeXt trained on scikit-learn's digits."""


@demo.command("train")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Demo folder (default: the shipped calibration/digits).")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the demo's own).")
@click.option("--seed", type=int, default=0, show_default=True)
@_run
def demo_train(out: Optional[Path], epochs: Optional[int], seed: int) -> None:
    """Regenerate the demo images and retrain the demo checkpoint (offline, a few minutes)."""
    from .models.demo.digits import DEMO_DIR, train_demo, write_digits_dataset

    out = out or DEMO_DIR
    write_digits_dataset(out, seed)
    kwargs = {"epochs": epochs} if epochs else {}
    res = train_demo(out, out / "resnext_demo.pt", seed=seed, **kwargs)
    _say(f"trained {res['checkpoint']}: validation top-1 {res['val_top1'] * 100:.2f}% in {res['seconds']:.0f} s")


@demo.command("keras")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The .keras file to write (default: the shipped calibration/digits/resnext_keras_demo.keras).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs (default: the Keras demo's own).")
@click.option("--seed", type=int, default=0, show_default=True)
@_run
def demo_keras(out: Optional[Path], epochs: Optional[int], seed: int) -> None:
    """Retrain the Keras demo (the seeds' Keras ResNeXt block, on the digits; Keras on the torch backend)."""
    from .models.demo.keras import DEFAULT_EPOCHS, train_keras_demo

    res = train_keras_demo(out, epochs or DEFAULT_EPOCHS, seed)
    _say(f"trained {res['path']}: validation top-1 {res['val_top1'] * 100:.2f}% in {res['seconds']:.0f} s")


@demo.command("standin")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Stand-in folder (default: the shipped calibration/standin).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps of 32 images (default: the stand-in's own, 800).")
@click.option("--seed", type=int, default=0, show_default=True)
@_run
def demo_standin(out: Optional[Path], steps: Optional[int], seed: int) -> None:
    """Regenerate the stand-in's images and retrain it: ResNeXt-50 32x4d on 48x48 shapes (offline, ~5-30 min on 2 cores)."""
    from .models.demo.standin import DEFAULT_STEPS, STANDIN_DIR, train_standin, write_standin_dataset

    out = out or STANDIN_DIR
    write_standin_dataset(out, seed)
    res = train_standin(out, out / "resnext50_standin.pt", steps=steps or DEFAULT_STEPS, seed=seed)
    _say(f"trained {res['checkpoint']}: validation top-1 {res['val_top1'] * 100:.2f}% in {res['seconds']:.0f} s")


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--build", "build_dir", type=click.Path(path_type=Path), required=True, help="Build directory or bundle (has manifest.json).")
@click.option("--backend", type=click.Choice(["auto"] + backends.by_preference()), default="auto", show_default=True,
              help="auto: TensorRT engine, then OpenVINO, then ONNX Runtime, whichever this machine can run.")
@click.option("--precision", type=click.Choice(["auto", "int8", "fp16", "fp32"]), default="auto", show_default=True, help="auto prefers INT8.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the artifact (faster start).")
@_run
def predict(images: tuple, build_dir: Path, backend: str, precision: str, top_k: int, as_json: bool, no_verify: bool) -> None:
    """Classify image files with a build's artifact (the on-device runtime, no PyTorch)."""
    from . import runtime

    with runtime.load(build_dir, backend, precision, verify=not no_verify) as clf:
        preds = clf.predict(list(images), top_k=top_k)
        from .tensorrt.bundle import engines_pending_note

        note = engines_pending_note(clf.manifest, f"{clf.artifact.name} ({clf.backend}, {clf.precision})")
        if note:
            _say(f"note: {note}", err=True)
        if as_json:
            out = {"build": str(build_dir), "artifact": clf.artifact.name, "backend": clf.backend,
                   "precision": clf.precision, "predictions": [p.to_dict() for p in preds]}
            _say(json.dumps(out, indent=2))
            return
        _say(f"using {clf.artifact.name} ({clf.backend}, {clf.precision})", err=True)
        for p in preds:
            _say(f"{p.source}: {p.label} ({p.probability:.2%})")
            if top_k > 1:
                for _, label, prob in p.top_k:
                    _say(f"    {label:<20} {prob:8.2%}")


@cli.command()
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), required=True, help="FP32 ONNX model (e.g. from `export`).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for sensitivity.json/.md/.png (replaced whole).")
@_force_opt
@click.option("--calib", type=click.Path(path_type=Path), default=None, help="Calibration images (default: the recipe's, else the demo's).")
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Labeled images, ImageFolder layout (default: the recipe's, else the demo's).")
@click.option("--activations", multiple=True, type=click.Choice(["uint8", "int8"]),
              help="Activation flavour(s) to quantize with (repeatable). Default: those of the recipe's INT8 backends.")
@click.option("--measure", type=click.Choice(["quantize-one", "float-one", "both"]), default=None,
              help="quantize-one: error with only the layer quantized; float-one: with only it left in float. Default: the recipe's.")
@click.option("--subset", type=int, default=None, help="Validation images to measure on (default: the recipe's fallback.subset).")
@click.option("--max-excluded", type=int, default=None, help="Cap on layers in float for the search (default: fallback.max_excluded_layers).")
@click.option("--no-search", is_flag=True, help="Only rank the layers; do not search the fallback list.")
@click.option("--compare-nncf", is_flag=True, help="Also run NNCF's quantize_with_accuracy_control (OpenVINO) and set it beside ours.")
@click.option("--json", "as_json", is_flag=True, help="Print sensitivity.json.")
@_scale_options
@_size_opt
@_preprocessing_opt
@_target_opt
@_recipe_opt
@click.pass_context
@_run
def sensitivity(ctx: click.Context, onnx_path: Path, out: Path, calib: Optional[Path], val: Optional[Path], activations: tuple,
                measure: Optional[str], subset: Optional[int], max_excluded: Optional[int], no_search: bool, compare_nncf: bool,
                as_json: bool, workers: int, ray_address: Optional[str], input_size: Optional[int], preprocessing: Optional[str],
                target: str, recipe: Optional[Path], force: bool) -> None:
    """Rank the layers by how much INT8 error each brings, find the layers to leave in float, compare with NNCF.

    With --workers / --ray-address the layers are shared out to Ray workers and the candidate checks sharded by image."""
    from .pipeline.sensitivity import markdown_table
    from .accuracy.study import StudyOptions, comparison_rows, study_file

    doc = study_file(StudyOptions(onnx_path, out, _recipe(target, recipe), calib, val, input_size, activations, measure, subset,
                                  max_excluded, not no_search, compare_nncf, preprocessing, _scale(workers, ray_address), force),
                     ctx.obj["progress"]).document
    if as_json:
        _say(json.dumps(doc, indent=2))
        return
    sens = doc["sensitivity"]
    _say(f"{len(sens['layers'])} layers on {sens['images']} images in {sens['seconds']['total']:.1f} s; ranked by {sens['ranked_by']}\n")
    _say("\n".join(markdown_table(sens, 10)))
    if "search" in doc:
        s = doc["search"]
        _say("\nfallback: " + (f"{len(s['excluded'])} layers in float pass the gate: {', '.join(s['excluded']) or '(plain INT8 passes)'}"
                                     if s["passed"] else f"no list of up to {doc['max_excluded_layers']} layers passes the gate"))
    if "comparison" in doc:
        rows = comparison_rows(doc)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        _say("")
        for r in rows:
            _say("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    _say(f"\nwrote {Path(out) / 'sensitivity.md'}")


@demo.command("hostile")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint to write (e.g. hostile.pt).")
@click.option("--blocks", default="layer1.0,layer2.0", show_default=True, help="Bottleneck blocks to make hostile, comma-separated.")
@click.option("--factor", type=float, default=256.0, show_default=True, help="Scale of the inflated channel (a power of two keeps the float model exact).")
@click.option("--channel", type=int, default=0, show_default=True)
@_run
def demo_hostile(out: Path, blocks: str, factor: float, channel: int) -> None:
    """Write the demo model with a few layers made INT8-hostile; its float function is unchanged (see models/demo/hostile.py)."""
    from .models.demo.digits import DEMO_CALIB, DEMO_VAL
    from .models.demo.hostile import write_hostile_demo

    res = write_hostile_demo(out, [b.strip() for b in blocks.split(",") if b.strip()], factor, channel)
    layers = [n for r in res["hostile"] for n in r["onnx_nodes"]]
    _say(f"wrote {res['checkpoint']}: hostile layers {', '.join(layers)}")
    _say(f"build it: resnext-deploy build --model {out} --arch resnext_demo --calib {DEMO_CALIB} --val {DEMO_VAL}")


@cli.command()
@click.argument("build_dir", type=click.Path(path_type=Path), required=False)
@click.option("--arch", default=None, help="Build this architecture first (e.g. resnext50_32x4d) instead of benchmarking BUILD_DIR.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="torchvision-format checkpoint for --arch (default: seeded weights, BatchNorm re-estimated on natural images).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench"), show_default=True, help="Output directory.")
@_force_opt
@click.option("--cache", type=click.Path(path_type=Path), default=None, help="Cache for generated images and weights (default ~/.cache/resnext-deploy/bench).")
@click.option("--rounds", type=int, default=10, show_default=True, help="Interleaved rounds over the configurations.")
@click.option("--iterations", type=int, default=10, show_default=True, help="Timed batch-1 runs per configuration per round.")
@click.option("--batches", type=int, default=2, show_default=True, help="Timed batch-8 runs per configuration per round.")
@click.option("--images", type=int, default=100, show_default=True, help="Validation images every configuration classifies (agreement).")
@click.option("--config", "configs", multiple=True, help="Only these configurations (repeatable), e.g. --config nncf-int8.")
@click.option("--profile-runs", type=int, default=20, show_default=True, help="Batch-1 runs under each runtime's per-layer profiler (0: none).")
@click.option("--calib-count", type=int, default=300, show_default=True, help="Calibration images for --arch.")
@click.option("--val-count", type=int, default=500, show_default=True, help="Validation images for --arch.")
@click.option("--e2e-images", type=int, default=48, show_default=True,
              help="Generated camera-size JPEGs (1280x960, 1920x1080) classified end to end, file to label (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print bench.json instead of the table.")
@_trust_opt
@click.pass_context
@_run
def bench(ctx: click.Context, build_dir: Optional[Path], arch: Optional[str], weights: Optional[Path], out: Path,
          cache: Optional[Path], rounds: int, iterations: int, batches: int, images: int, configs: tuple,
          profile_runs: int, calib_count: int, val_count: int, e2e_images: int, as_json: bool, trust_pickle: bool,
          force: bool) -> None:
    """Time our artifacts beside PyTorch eager, ONNX Runtime, OpenVINO and NNCF, in one run (writes bench.json/.md/.png/.html)."""
    from .bench import BenchOptions, BenchRequest, run_bench
    from .bench.render import render_table

    opts = BenchOptions(rounds=rounds, latency_iterations=iterations, throughput_batches=batches, predict_images=images,
                        configs=list(configs) or None, profile_runs=profile_runs, end_to_end_images=e2e_images)
    request = BenchRequest(build_dir=build_dir, arch=arch, weights=weights, out=out, cache=cache, options=opts,
                           calib_count=calib_count, val_count=val_count, allow_pickle=trust_pickle, force=force)
    res = run_bench(request, progress=ctx.obj["progress"]).to_dict()
    _say(json.dumps(res, indent=2, default=str) if as_json else render_table(res))
    _say(f"\nwrote {', '.join(res['outputs'])}")


def main() -> None:
    cli(prog_name="resnext-deploy")
