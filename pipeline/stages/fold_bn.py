"""Stage `fold_bn`: fold every BatchNorm that follows a conv/linear into it (exact, real eps)."""

from ..channels.fold_bn import fold_batchnorm
from .base import Stage


class FoldBN(Stage):
    kind = "fold_bn"
    fields = {}

    def provides(self, params):
        return {"folded"}

    def apply(self, ctx, params):
        ctx.folded = True
        return fold_batchnorm(ctx.model, ctx.example)
