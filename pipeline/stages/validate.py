"""Stage `validate`: exported files against the compressed model (decisions replayed for token-reduced
models), the compressed model against the original. The settings are recorded in compressed.safetensors,
so `otcompress validate DIR` judges by the same gate."""

from ..recipe.schema import Field
from ..validation import DEFAULT_TOL, ERROR_STATS, Gate, probe_inputs, summary, tolerances, validate
from .base import Stage


def _backends(v):
    from otcompress.exporters import BACKENDS

    if not all(b in BACKENDS for b in v):
        return f"expected a list drawn from {', '.join(repr(b) for b in BACKENDS)}"


def task_gate_defaults(ctx) -> dict:
    """The gate defaults of the task the model's outputs mean (otcompress.tasks)."""
    import torch

    from ..outputs import flatten
    from ..tasks import task_of

    with torch.no_grad():
        outs = flatten(ctx.model(ctx.example))
    return dict(task_of(ctx.model, outs, ctx.example).gate_defaults)


class Validate(Stage):
    kind = "validate"
    changes_model = False
    fields = {
        "atol": Field((float,), lo=0.0, help=f"a non-negative number (default {DEFAULT_TOL['fp32'][0]:g} fp32, "
                                             f"{DEFAULT_TOL['fp16'][0]:g} fp16)"),
        "rtol": Field((float,), lo=0.0, help=f"a non-negative number (default {DEFAULT_TOL['fp32'][1]:g} fp32, "
                                             f"{DEFAULT_TOL['fp16'][1]:g} fp16)"),
        "atol_scale": Field((float,), lo=0.0, help="a non-negative number: atol is at least this times each output's "
                                                  "largest magnitude (default: the task's, 1e-5 for detectors and "
                                                  "segmenters, 0 for classifiers)"),
        "float32_floor": Field((bool,), default=Gate.float32_floor,
                               help="judge a failing output against 4x the model's own float32 error (its distance "
                                    "from float64 on the same inputs); false: the tolerances alone"),
        "error_stat": Field((str,), default="elemwise", choices=ERROR_STATS,
                            help="Polygraphy's check_error_stat: elemwise, max, mean or median"),
        "samples": Field((int,), default=64, lo=1, help="a positive integer"),
        "seed": Field((int,), default=0),
        "min_top1_agreement": Field((float,), default=Gate.min_top1_agreement, lo=0.0, hi=1.0),
        "max_accuracy_drop": Field((float,), lo=0.0, hi=1.0),
        "min_decision_agreement": Field((float,), default=Gate.min_decision_agreement, lo=0.0, hi=1.0,
                                        help="a fraction in [0, 1]: samples on which an exported token-reduced model "
                                             "must take PyTorch's own merge decisions"),
        "min_pixel_agreement": Field((float,), default=Gate.min_pixel_agreement, lo=0.0, hi=1.0,
                                     help="segmenters: fraction of pixels whose class agrees with the original's"),
        "min_miou_vs_original": Field((float,), default=Gate.min_miou_vs_original, lo=0.0, hi=1.0,
                                      help="segmenters: mIoU against the original's masks"),
        "max_miou_drop": Field((float,), lo=0.0, hi=1.0, help="segmenters with label masks: allowed mIoU drop"),
        "min_map_vs_original": Field((float,), default=Gate.min_map_vs_original, lo=0.0, hi=1.0,
                                     help="detectors: mAP50-95 against the original's detections as ground truth"),
        "max_map_drop": Field((float,), lo=0.0, hi=1.0, help="detectors with labelled boxes: allowed mAP50-95 drop"),
        "min_int8_agreement": Field((float,), default=Gate.min_int8_agreement, lo=0.0, hi=1.0,
                                    help="an INT8 artifact's agreement with the FP32 model (the task's measure)"),
        "max_int8_accuracy_drop": Field((float,), lo=0.0, hi=1.0, help="with labels: the INT8 artifact's accuracy drop "
                                                                       "from the FP32 model"),
        "int8_steps": Field((float,), default=Gate.int8_steps, lo=0.0,
                            help="how far an INT8 artifact's integer kernels may differ from its meaning (the file "
                                 "with Q/DQ run as float ops), as a mean of quantization steps of each output"),
        "backends": Field((list,), check=_backends, help="a list of backends to check (default: all exported)"),
    }

    def apply(self, ctx, params):
        from otcompress.exporters import BACKENDS
        from otcompress.exporters.pytorch import TorchRunner

        d = ctx.recipe.data or {}
        samples = min(params["samples"], d.get("limit") or params["samples"])  # [data].limit caps evaluation
        probe = probe_inputs(d.get("eval"), d.get("mean"), d.get("std"), samples, params["seed"], ctx.input_shape)
        wanted = params["backends"] or list(BACKENDS)
        runs = [(b, ctx.exports[b.artifact]) for name, b in BACKENDS.items() if name in wanted and b.artifact in ctx.exports]
        from ..validation.quantized import quantized_reference

        quantized = {b.name: quantized_reference(ctx.out, e.gate) for b, e in runs if e.gate}
        precision = "fp16" if any(e.precision == "fp16" for _, e in runs) else "fp32"  # what was built, not asked for
        atol, rtol = tolerances(precision)
        settings = {k: v for k, v in params.items() if k in Gate.__dataclass_fields__ and v is not None}
        task = task_gate_defaults(ctx)
        if precision != "fp32":  # a task's tolerances are for FP32 artifacts; an FP16 engine keeps its own
            task = {k: v for k, v in task.items() if k not in ("atol", "rtol")}
        gate = Gate(**{"atol": atol, "rtol": rtol, **task, **settings})
        backends = [b.open(e.path) for b, e in runs]
        shape = ctx.input_shape
        res = validate(TorchRunner(ctx.model, "pytorch:compressed", input_shape=shape), backends, probe.x, gate,
                       original=TorchRunner(ctx.original, "pytorch:original", input_shape=shape), labels=probe.labels,
                       input_source=probe.source, quantized=quantized)
        res.seed = params["seed"]
        ctx.validation = res
        ctx.gate = gate.as_dict() | {"samples": params["samples"], "seed": params["seed"]}
        print(summary(res))
        return {"passed": res.passed, "checks": len(res.checks)}
