"""Stages `prune` and `intrafusion`: shrink CNN channel groups physically."""

from ..schema import Field
from ..shrink import shrink_channels
from ..sparsity import check_sparsity
from .base import Stage


def _patterns(v):
    if not all(isinstance(p, str) for p in v):
        return "expected a list of layer-name patterns such as [\"layer1.*\"]"


COMMON = {
    "sparsity": Field((float, list, dict), required=True, check=check_sparsity,
                      help="a fraction in [0, 1), a per-stage list, or a table of patterns"),
    "round_to": Field((int,), default=1, lo=1, help="a positive integer (kept counts are multiples of it)"),
    "exclude": Field((list,), default=[], check=_patterns),
    "importance": Field((str,), default="l1", choices=("l1", "l2", "taylor", "bn_scale")),
    "scope": Field((str,), choices=("all", "internal"),
                   help="'all' or 'internal' (block-internal channels only; the default for option-A ResNets)"),
}


class Prune(Stage):
    kind = "prune"
    fields = COMMON
    method = "prune"

    def needs(self, params, model, data):
        if params["importance"] == "taylor" and not (data and (data.get("eval") or data.get("train"))):
            return ["importance = 'taylor' needs [data].eval or [data].train"]
        return []

    def apply(self, ctx, params):
        data = None
        if params["importance"] == "taylor":
            ds = ctx.dataset("train") or ctx.dataset("eval")
            idx = slice(0, min(len(ds), 256))
            data = (ctx.normalise(ds, idx), ds.y[idx] if ds.y is not None else None)
        extra = {k: params[k] for k in ("fusion", "solver", "reg", "targets", "marginals") if k in params}
        groups = shrink_channels(ctx.model, ctx.example, method=self.method, sparsity=params["sparsity"],
                                 round_to=params["round_to"], exclude=params["exclude"], importance=params["importance"],
                                 scope=params["scope"], data=data, progress=ctx.progress, **extra)
        return {"groups": groups}


class IntraFusion(Prune):
    kind = "intrafusion"
    method = "intrafusion"
    fields = {
        **COMMON,
        "solver": Field((str,), default="emd", choices=("emd", "sinkhorn")),
        "reg": Field((float,), default=0.01, lo=1e-6, help="a positive number (Sinkhorn entropic regularisation)"),
        "targets": Field((str,), default="top", choices=("top", "centroids")),
        "marginals": Field((str,), default="uniform", choices=("uniform", "importance")),
        "fusion": Field((str,), default="exact", choices=("exact", "reference")),
    }
