"""Stages `prune` and `intrafusion`: shrink CNN channel groups physically, with a keep strategy each
(magnitude top-k, or optimal-transport fusion), to a sparsity, a FLOPs target or a measured-latency target."""

import copy

from ..channels.allocation import ALLOCATIONS, DEFAULT_ALLOCATION, check_flops, check_sparsity
from ..channels.fusion import FUSIONS, OT_DEFAULTS
from ..channels.importance import DEFAULT_IMPORTANCE, IMPORTANCE
from ..channels.latency import DEFAULT_RUNTIME, RUNTIMES
from ..channels.sensitivity import FILL, FILLS
from ..channels.shrink import STRATEGIES, shrink_channels
from ..errors import OTCError
from ..recipe.schema import Field
from .base import Stage


def _patterns(v):
    if not all(isinstance(p, str) for p in v):
        return "expected a list of layer-name patterns such as [\"layer1.*\"]"


PROBE_IMAGES = 128  # calibration images the data-reading allocation and importance measure on

COMMON = {
    "sparsity": Field((float, list, dict), check=check_sparsity,
                      help="a fraction in [0, 1), a per-stage list, or a table of patterns"),
    "flops": Field((float,), check=check_flops, help="the fraction of FLOPs to keep, in (0, 1] (instead of sparsity)"),
    "latency": Field((float,), check=lambda v: None if 0 < v <= 1 else "expected the fraction of the latency to keep, in (0, 1]",
                     help="the fraction of the measured latency (on latency_runtime) to keep, in (0, 1] (instead "
                          "of sparsity or flops)"),
    "latency_runtime": Field((str,), default=DEFAULT_RUNTIME, choices=RUNTIMES,
                             help="what the latency is measured on: 'onnxruntime' (CPU, the FP32 export), "
                                  "'onnxruntime-int8' (the quantize stage's default INT8 model), 'tensorrt-fp16', "
                                  "'tensorrt-int8'"),
    "latency_threads": Field((int,), default=2, lo=1, help="onnxruntime threads the latency is measured with"),
    "latency_batch": Field((int,), default=1, lo=1, help="the batch the latency is measured at"),
    "allocation": Field((str,), default=DEFAULT_ALLOCATION, choices=ALLOCATIONS,
                        help="how a flops or latency target is shared among groups: 'uniform' (one sparsity), "
                             "'global' (one importance threshold) or 'sensitivity' (least measured output error, "
                             "on calibration images)"),
    "proxy": Field((str,), default=FILL, choices=FILLS,
                   help="what a cut channel reads when allocation = 'sensitivity' measures it: 'mean' (its mean "
                        "over the images), 'regress' (its least-squares prediction from the channels kept) or 'zero'"),
    "round_to": Field((int, str), default=1, check=lambda v: None if v == "auto" or (isinstance(v, int) and v >= 1)
                      else "expected a positive integer or 'auto'",
                      help="kept counts are multiples of it; 'auto': the multiple the latency table shows fast here"),
    "exclude": Field((list,), default=[], check=_patterns),
    "importance": Field((str,), default=DEFAULT_IMPORTANCE, choices=IMPORTANCE),
    "scope": Field((str,), choices=("all", "internal"),
                   help="'all' or 'internal' (block-internal channels only; the default for option-A ResNets)"),
}


def nothing_to_do(kind: str, sparsity, groups) -> None:
    """A channel stage that asked for shrinking and shrank nothing is an error, not a silent no-op."""
    asked = any(v > 0 for v in (sparsity.values() if isinstance(sparsity, dict) else
                                sparsity if isinstance(sparsity, list) else [sparsity]))
    if asked and not any(g["after"] < g["before"] for g in groups):
        whole = "; ".join(f"{f['group']}: {f['reason']}" for f in groups.left_whole[:4])
        raise OTCError(f"{kind}: nothing to shrink at this sparsity ({len(groups)} shrinkable groups"
                       + (f"; left whole: {whole}" if whole else "") + ")")


class Prune(Stage):
    kind = "prune"
    fields = COMMON
    strategy_keys: tuple = ()

    def needs(self, params):
        imp = params["importance"]
        needs = {"model.channels": ""}
        if params["allocation"] == "sensitivity":
            needs["data.calib"] = "allocation = 'sensitivity' measures each group on calibration images"
        if IMPORTANCE[imp].calibration:
            needs["data.calib"] = f"importance = {imp!r} reads the layers' inputs on calibration images"
        elif IMPORTANCE[imp].needs_data:
            needs.update({"data.any": f"importance = {imp!r} reads data", "model.trainable": f"importance = {imp!r} "
                          "takes gradients of a classification loss"})
        return needs

    def provides(self, params):
        return {"shrunk"}

    def check(self, params, model, data, facts):
        if sum(params[k] is not None for k in ("sparsity", "flops", "latency")) != 1:
            return ["give exactly one of sparsity (fraction of channels removed), flops (fraction of FLOPs kept) or "
                    "latency (fraction of the measured latency kept)"]
        if params["allocation"] == "sensitivity" and params["sparsity"] is not None:
            return [("allocation", "'sensitivity' shares a flops or latency budget; give flops or latency")]
        if params["proxy"] != FILL and params["allocation"] != "sensitivity":
            return [("proxy", "it is what allocation = 'sensitivity' measures with; set that allocation or drop it")]
        return []

    def apply(self, ctx, params):
        data, crit = None, IMPORTANCE[params["importance"]]
        if crit.calibration:  # the same images the sensitivity allocation measures on
            data = (ctx.calibration(PROBE_IMAGES, 0), None)
        elif crit.needs_data:
            ds = ctx.dataset("train") or ctx.dataset("eval")
            idx = slice(0, min(len(ds), 256))
            data = (ctx.normalise(ds, idx), ds.y[idx] if ds.y is not None else None)
        keep = STRATEGIES[self.kind](importance=params["importance"], **{k: params[k] for k in self.strategy_keys})
        unfolded = ctx.original if ctx.folded and not ctx.channel_maps else None  # importance before folding
        probe = ctx.calibration(PROBE_IMAGES, 0) if params["allocation"] == "sensitivity" else None
        from ..channels.latency import LayerTable, fast_multiple

        if params["latency"] is not None or params["round_to"] == "auto":
            RUNTIMES[params["latency_runtime"]].check()  # TensorRT not installed: said before any work
        table = LayerTable(threads=params["latency_threads"], batch=params["latency_batch"]) if params["latency"] else None
        round_to = params["round_to"]
        if round_to == "auto":
            round_to = fast_multiple(ctx.model, ctx.example, params["latency_threads"], params["latency_batch"],
                                     runtime=params["latency_runtime"], reach=params["flops"], exclude=params["exclude"],
                                     scope=params["scope"])
        shrink = dict(keep=keep, sparsity=params["sparsity"] or 0.0, flops=params["flops"], allocation=params["allocation"],
                      round_to=round_to, exclude=params["exclude"], scope=params["scope"], data=data, unfolded=unfolded,
                      progress=ctx.progress, probe=probe, proxy=params["proxy"])
        details = {}
        if params["latency"] is not None:
            groups, details = self.to_latency(ctx, params, table, shrink)
        else:
            groups = shrink_channels(ctx.model, ctx.example, **shrink)
        nothing_to_do(self.kind, params["sparsity"] if params["sparsity"] is not None else 0.5, groups)
        ctx.record_shrink(groups.maps)
        return {"groups": list(groups), "left_whole": groups.left_whole, "round_to": round_to, **details}

    def to_latency(self, ctx, params, table, shrink, tolerance: float = 0.03, attempts: int = 4):
        """Shrink to a measured-latency target: allocate by the calibrated table (channels/latency.py), measure
        the result, and where it misses by more than `tolerance` (relative), allocate again to a corrected target
        from the unshrunk model. The report gives predicted and measured latency for every attempt."""
        from ..channels.latency import calibrated, measure_models, refuse_below_floor

        opts = dict(threads=params["latency_threads"], batch=params["latency_batch"], runtime=params["latency_runtime"])
        before = copy.deepcopy(ctx.model)
        models: dict = {}

        def cost(groups):
            key = tuple(g.root for g in groups)
            if key not in models:
                lm = calibrated(before, ctx.example, groups, table, **opts, exclude=params["exclude"],
                                scope=params["scope"], round_to=shrink["round_to"])
                refuse_below_floor(params["latency"], lm, **opts)
                models[key] = lm
            return models[key]

        target, tries, best, memo = params["latency"], [], None, {}  # memo: sensitivity measured once
        for attempt in range(attempts):
            model = ctx.model if attempt == 0 else copy.deepcopy(before)
            groups = shrink_channels(model, ctx.example, cost=cost, target=target, memo=memo, **shrink)
            (roots, lm), = models.items()
            keeps = {r["group"]: r["after"] / r["before"] for r in groups}
            predicted = float(lm.ratio([keeps.get(root, 1.0) for root in roots]))
            dense_ms, shrunk_ms = measure_models([before, model], ctx.example, **opts)  # interleaved
            measured = shrunk_ms / dense_ms
            tries.append({"target": target, "predicted": predicted, "measured": measured})
            if best is None or abs(measured - params["latency"]) < abs(best[2] - params["latency"]):
                best = (model, groups, measured, dense_ms)
            if abs(measured - params["latency"]) <= tolerance * params["latency"]:
                break
            target = max(0.02, min(1.0, target * params["latency"] / measured))  # aim off by the miss
        model, groups, measured, dense_ms = best
        ctx.model = model
        miss = measured / params["latency"] - 1
        return groups, {"latency": {"target": params["latency"], "measured": measured, "miss": miss,
                                    "dense_ms": dense_ms, "ms": dense_ms * measured, "attempts": tries, "floor": lm.floor,
                                    "threads": opts["threads"], "batch": opts["batch"], "runtime": opts["runtime"],
                                    "table": str(table.path),
                                    "within_10_percent": abs(miss) <= 0.10}}


class IntraFusion(Prune):
    kind = "intrafusion"
    strategy_keys = ("fusion", "solver", "reg", "targets", "marginals")
    fields = {
        **COMMON,
        "solver": Field((str,), default=OT_DEFAULTS["solver"], choices=("emd", "sinkhorn")),
        "reg": Field((float,), default=OT_DEFAULTS["reg"], lo=1e-6, help="a positive number (Sinkhorn entropic regularisation)"),
        "targets": Field((str,), default=OT_DEFAULTS["targets"], choices=("top", "centroids", "medoids")),
        "marginals": Field((str,), default=OT_DEFAULTS["marginals"], choices=("uniform", "importance", "nearest")),
        "fusion": Field((str,), default=OT_DEFAULTS["fusion"], choices=FUSIONS,
                        help="'merge' (kept producers exact, consumers absorb the fused channels; the default: never "
                             "below prune on the benchmark), 'exact' (function-preserving averages) or 'reference'"),
    }
