"""Stage `repair`: fix a shrunk (or folded) network's activation statistics with unlabeled calibration images,
and, where it pays, refit the layers that read shrunk channels by least squares; every correction is
folded into the weights. No labels, no gradient steps (channels/repair.py)."""

from __future__ import annotations

from ..channels.repair import DEFAULTS
from ..recipe.schema import Field
from .base import Stage


class Repair(Stage):
    kind = "repair"
    fields = {
        "samples": Field((int,), default=DEFAULTS["samples"], lo=8, help="calibration images used (taken at random, seeded)"),
        "statistics": Field((bool,), default=DEFAULTS["statistics"], help="match per-channel output statistics to the original's"),
        "reconstruct": Field((str,), default=DEFAULTS["reconstruct"], choices=("auto", "always", "never"),
                             help="least-squares refit of layers: where it lowers held-out error, everywhere, never"),
        "positions": Field((int,), default=DEFAULTS["positions"], lo=1, help="output positions per image sampled for the refit"),
        "seed": Field((int,), default=DEFAULTS["seed"]),
    }

    def needs(self, params):
        return {"data.calib": "repair calibrates on unlabeled images",
                "folded|shrunk": "it repairs what fold_bn or a channel stage changed"}

    def apply(self, ctx, params):
        from ..channels.repair import reference, repair

        x = ctx.calibration(params["samples"], params["seed"])
        ref = reference(ctx.original, ctx.folded, ctx.example)
        return repair(ctx.model, ref, x, ctx.channel_maps, stats=params["statistics"], reconstruct=params["reconstruct"],
                      positions=params["positions"], progress=ctx.progress)
