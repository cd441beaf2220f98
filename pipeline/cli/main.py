"""The `otcompress` command: run, load, inspect, validate, bench, doctor, sweep. Every expected failure
ends in one line and a documented exit code; an unexpected one in one line naming the stage (and layer)
and the file holding the full traceback."""

from __future__ import annotations

import functools
import sys
import tempfile
import time
import traceback
from pathlib import Path

import click

from ..version import __version__
from ..errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, InternalError, OTCError
from ..validation import ERROR_STATS
from ..where import StageFailed

EXIT_CODES = f"""Exit codes: 0 success; {EXIT_CHECK_FAILED} a validation check failed (artifacts kept); {EXIT_BAD_INPUT} bad usage or
input (a recipe key, file, layer or value, named in the message); {EXIT_INTERNAL} an internal error (the message names
the stage and layer, and the file with the full traceback); {EXIT_INTERRUPTED} interrupted (Ctrl-C: the previous
result is intact; `run --resume` continues a training stage)."""


def _write_traceback(exc: BaseException, folder: Path | None) -> Path:
    text = "".join(traceback.format_exception(exc))
    if folder is not None and folder.is_dir():
        path = folder / "error.log"
    else:
        path = Path(tempfile.gettempdir()) / f"otcompress-error-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path.write_text(text)
    return path


def friendly(fn):
    """Expected failures exit with their code and one clear line; nothing ends in a raw traceback."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except OTCError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was replaced (the previous result, if any, is intact); "
                       "`otcompress run --resume` continues an interrupted training stage", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except StageFailed as e:
            log = _write_traceback(e.error, e.log_dir)
            click.echo(f"internal error in {e} — full traceback in {log}", err=True)
            sys.exit(EXIT_INTERNAL)
        except click.exceptions.Exit:
            raise
        except InternalError as e:  # a bug of ours found where it happened (it names the op, layer or file)
            log = _write_traceback(e, None)
            click.echo(f"internal error: {e} — full traceback in {log}", err=True)
            sys.exit(EXIT_INTERNAL)
        except Exception as e:  # a bug of ours: one line and the traceback's location
            log = _write_traceback(e, None)
            click.echo(f"internal error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''} — full "
                       f"traceback in {log}", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="otcompress")
def main():
    """Compress a trained PyTorch model by a recipe, export it to ONNX/TensorRT and validate it."""


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder (default artifacts/<name>).")
@click.option("--force", is_flag=True, help="Replace an existing output folder (only once the new run has succeeded).")
@click.option("--resume", is_flag=True, help="Continue an interrupted training stage from its last checkpoint.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. stages.1.sparsity=0.3.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@friendly
def run(recipe, out, force, resume, overrides, quiet):
    """Run RECIPE's stages and write compressed.safetensors, model.onnx, report.json and report.md."""
    from ..run import run_plan
    from ..plan import load_plan

    report = run_plan(load_plan(recipe, overrides), out, force=force, resume=resume, progress=not quiet)
    if report["validation"].get("passed") is False:
        click.echo(f"error: validation failed; artifacts kept in {report['out']} for inspection", err=True)
        sys.exit(EXIT_CHECK_FAILED)


@main.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "input_data", type=click.Path(exists=True, path_type=Path),
              help="Run it on images from this .npz / ImageFolder (normalised as in the run) and print the predictions.")
@click.option("--limit", type=click.IntRange(1), default=16, show_default=True, help="How many images of --input.")
@friendly
def load(path, input_data, limit):
    """Rebuild the compressed model stored in PATH (compressed.safetensors) and describe it."""
    import torch

    from ..metrics import count_flops, count_params
    from ..serialize import load_compressed
    from ..validation import probe_inputs

    model, meta = load_compressed(path)
    click.echo(f"{path}: {meta['arch']} {meta.get('args') or ''}")
    click.echo(f"  params {count_params(model):,}  FLOPs {count_flops(model, meta['input_shape']):,}  "
               f"changed modules {len(meta['modules'])}" + (f"  tokens {meta['tokens']['method']}" if meta.get("tokens") else ""))
    if input_data:
        from ..outputs import flatten

        probe = probe_inputs(input_data, meta.get("mean"), meta.get("std"), limit, 0, meta["input_shape"])
        with torch.no_grad():
            outs = flatten(model(torch.from_numpy(probe.x)))
        for name, y in outs.items():
            line = f"  {name} {tuple(y.shape)}"
            if y.dim() == 2:
                line += f" argmax {y.argmax(-1).tolist()}"
                if probe.y is not None and len(outs) == 1:
                    line += f"  accuracy {(y.argmax(-1).numpy() == probe.y).mean():.4f}"
            click.echo(line)
        decode = getattr(model, "decode_detections", None)
        if callable(decode):
            with torch.no_grad():
                dets = decode(outs)
            click.echo("  detections per image " + str([len(d["boxes"]) for d in dets]))


@main.command()
@click.argument("target")
@click.option("--scope", type=click.Choice(["all", "internal"]), help="Which channel groups to list.")
@click.option("--input-shape", help="For a model source: its input shape, e.g. 1,3,224,224.")
@click.option("--args", "model_args", help="For a model source: factory arguments as a TOML table, e.g. '{num_classes = 10}'.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="For a model source: its weights.")
@friendly
def inspect(target, scope, input_shape, model_args, checkpoint):
    """List what the stages would touch in a RECIPE, a compressed MODEL (.safetensors) or a model source
    (torchvision:resnet18 --input-shape 1,3,224,224): channel groups, groups left whole and why, transformer
    blocks, the task its outputs mean."""
    from .describe import describe

    click.echo(describe(target, scope, input_shape=input_shape, args=model_args, checkpoint=checkpoint))


@main.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), help="compressed.safetensors to compare against.")
@click.option("--original", type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint of the uncompressed model (same arch).")
@click.option("--data", type=click.Path(path_type=Path), help=".npz or ImageFolder with eval inputs (and labels).")
@click.option("--samples", type=click.IntRange(1), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--atol", type=click.FloatRange(0), help="Absolute tolerance (default 1e-4 fp32, 1e-2 fp16).")
@click.option("--rtol", type=click.FloatRange(0), help="Relative tolerance (default 1e-3 fp32, 1e-2 fp16).")
@click.option("--error-stat", type=click.Choice(ERROR_STATS),
              help="As Polygraphy's --check-error-stat (default: the recorded one, else elemwise).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), help="Minimum top-1 agreement with the original.")
@click.option("--min-decision-agreement", type=click.FloatRange(0, 1),
              help="Token-reduced models: fraction of samples on which the export must take PyTorch's own decisions.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the full result as JSON.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML for CI.")
@friendly
def validate(target, **opts):
    """Validate ARTIFACT_DIR, model.onnx or model.plan. Exit 0 pass, 1 a check failed, 2 bad usage/files."""
    from ..artifacts import atomic_write_json, atomic_write_text
    from ..validation import junit_xml, summary
    from ..validation.target import validate_target

    json_out, junit = opts.pop("json_out"), opts.pop("junit")
    res = validate_target(target, **opts)
    click.echo(summary(res))
    if json_out:
        atomic_write_json(json_out, res.as_dict())
    if junit:
        atomic_write_text(junit, junit_xml(res))
    sys.exit(0 if res.passed else EXIT_CHECK_FAILED)


@main.command()
@click.argument("artifact_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--batch", default="1,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--runs", type=click.IntRange(1), default=20, show_default=True, help="Timed runs per measurement.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True)
@friendly
def bench(artifact_dir, batch, runs, warmup):
    """Latency and throughput of original vs compressed on every available backend -> bench.json, bench.png."""
    from .bench import bench_artifacts

    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
        if not batches or min(batches) < 1:
            raise ValueError
    except ValueError:
        raise OTCError(f"--batch {batch!r}: expected comma-separated positive integers such as 1,32") from None
    bench_artifacts(artifact_dir, batches, runs, warmup)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--flops", help="FLOPs fractions to keep, e.g. 0.8,0.6,0.5,0.4,0.3.")
@click.option("--sparsities", help="Channel sparsities instead, e.g. 0.1,0.3,0.5.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder (default artifacts/<name>-sweep).")
@click.option("--force", is_flag=True, help="Replace an existing sweep folder's points.")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1),
              help="Accuracy budget (default: the recipe's validate stage's, else every validated point qualifies).")
@click.option("--runs", type=click.IntRange(1), default=20, show_default=True, help="Timed runs per latency.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, as for run.")
@friendly
def sweep(recipe, flops, sparsities, out, force, max_accuracy_drop, runs, overrides):
    """Run RECIPE's channel stage at several FLOPs targets (or sparsities): table, plot, smallest model within
    the accuracy budget (exit 1 if none is)."""
    from ..plan import load_plan
    from .sweep import parse_points, sweep as run_sweep, table

    points = parse_points(flops, sparsities)
    r = load_plan(recipe, list(overrides))
    if max_accuracy_drop is None:
        max_accuracy_drop = next((s.get("max_accuracy_drop") for s in r.stages if s["kind"] == "validate"), None)
    out = out or Path("artifacts") / f"{r.name}-sweep"
    res = run_sweep(recipe, points, out, force=force, max_drop=max_accuracy_drop, runs=runs, progress=True,
                    overrides=list(overrides))
    click.echo(table(res))
    click.echo(f"wrote {out}/sweep.json, sweep.md, sweep.png and one folder per point")
    if res["smallest_within_budget"] is None:
        click.echo("error: no point is within the accuracy budget", err=True)
        sys.exit(EXIT_CHECK_FAILED)
    click.echo(f"smallest within the accuracy budget: {res['smallest_within_budget']} ({out / res['smallest_within_budget']})")


@main.command()
@friendly
def doctor():
    """List what is installed and usable: torch/CUDA, onnxruntime providers, TensorRT, timm, transformers."""
    from .doctor import report

    click.echo(report())


if __name__ == "__main__":
    main()
