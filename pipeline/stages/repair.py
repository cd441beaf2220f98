"""Stage `repair`: fix a shrunk (or folded) network's activation statistics with unlabeled calibration images,
and, where it pays, refit the layers that read shrunk channels by least squares; every correction is
folded into the weights. No labels, no gradient steps (channels/repair.py)."""

from __future__ import annotations

from ..recipe.schema import Field
from .base import Stage


class Repair(Stage):
    kind = "repair"
    fields = {
        "samples": Field((int,), default=512, lo=8, help="calibration images used (taken at random, seeded)"),
        "statistics": Field((bool,), default=True, help="match per-channel output statistics to the original's"),
        "reconstruct": Field((str,), default="auto", choices=("auto", "always", "never"),
                             help="least-squares refit of layers: where it lowers held-out error, everywhere, never"),
        "positions": Field((int,), default=16, lo=1, help="output positions per image sampled for the refit"),
        "seed": Field((int,), default=0),
    }

    def needs(self, params):
        return {"data.calib": "repair calibrates on unlabeled images",
                "folded|shrunk": "it repairs what fold_bn or a channel stage changed"}

    def apply(self, ctx, params):
        from ..channels.repair import reference, repair

        from ..data import sample_dataset

        d = ctx.recipe.data
        ds = sample_dataset(d.get("calib") or d["train"], params["samples"], params["seed"])
        x = ctx.normalise(ds)
        if list(x.shape[1:]) != list(ctx.input_shape[1:]):
            from ..errors import OTCError

            raise OTCError(f"calibration images have shape {list(x.shape[1:])}; the model expects {list(ctx.input_shape[1:])}")
        ref = reference(ctx.original, ctx.folded, ctx.example)
        return repair(ctx.model, ref, x, ctx.channel_maps, stats=params["statistics"], reconstruct=params["reconstruct"],
                      positions=params["positions"], progress=ctx.progress)
