from ..fold_bn import fold_batchnorm
from .base import Stage


class FoldBN(Stage):
    kind = "fold_bn"
    fields = {}

    def apply(self, ctx, params):
        return fold_batchnorm(ctx.model, ctx.example)
