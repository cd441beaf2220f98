"""Stages `prune` and `intrafusion`: shrink CNN channel groups physically, with a keep strategy each
(magnitude top-k, or optimal-transport fusion)."""

from ..channels.allocation import ALLOCATIONS, DEFAULT_ALLOCATION, check_flops, check_sparsity
from ..channels.fusion import FUSIONS, OT_DEFAULTS
from ..channels.importance import DEFAULT_IMPORTANCE, IMPORTANCE
from ..channels.shrink import STRATEGIES, shrink_channels
from ..errors import OTCError
from ..recipe.schema import Field
from .base import Stage


def _patterns(v):
    if not all(isinstance(p, str) for p in v):
        return "expected a list of layer-name patterns such as [\"layer1.*\"]"


COMMON = {
    "sparsity": Field((float, list, dict), check=check_sparsity,
                      help="a fraction in [0, 1), a per-stage list, or a table of patterns"),
    "flops": Field((float,), check=check_flops, help="the fraction of FLOPs to keep, in (0, 1] (instead of sparsity)"),
    "allocation": Field((str,), default=DEFAULT_ALLOCATION, choices=ALLOCATIONS,
                        help="how a flops target is shared among groups: 'uniform' (one sparsity) or 'global' "
                             "(one importance threshold)"),
    "round_to": Field((int,), default=1, lo=1, help="a positive integer (kept counts are multiples of it)"),
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
        if IMPORTANCE[imp].needs_data:
            needs.update({"data.any": f"importance = {imp!r} reads data", "model.trainable": f"importance = {imp!r} "
                          "takes gradients of a classification loss"})
        return needs

    def provides(self, params):
        return {"shrunk"}

    def check(self, params, model, data, facts):
        if (params["sparsity"] is None) == (params["flops"] is None):
            return ["give exactly one of sparsity (fraction of channels removed) or flops (fraction of FLOPs kept)"]
        return []

    def apply(self, ctx, params):
        data = None
        if IMPORTANCE[params["importance"]].needs_data:
            ds = ctx.dataset("train") or ctx.dataset("eval")
            idx = slice(0, min(len(ds), 256))
            data = (ctx.normalise(ds, idx), ds.y[idx] if ds.y is not None else None)
        keep = STRATEGIES[self.kind](importance=params["importance"], **{k: params[k] for k in self.strategy_keys})
        unfolded = ctx.original if ctx.folded and not ctx.channel_maps else None  # importance before folding
        groups = shrink_channels(ctx.model, ctx.example, keep, sparsity=params["sparsity"] or 0.0,
                                 flops=params["flops"], allocation=params["allocation"], round_to=params["round_to"],
                                 exclude=params["exclude"], scope=params["scope"], data=data, unfolded=unfolded,
                                 progress=ctx.progress)
        nothing_to_do(self.kind, params["sparsity"] if params["flops"] is None else 1 - params["flops"], groups)
        ctx.record_shrink(groups.maps)
        return {"groups": list(groups), "left_whole": groups.left_whole}


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
