"""Stage `tokens`: static-ratio token reduction (ToMe / PiToMe / OTPrune, or any registered method) in
every transformer block, through the model family's adapter."""

from ..recipe.schema import Field
from ..tokens.merge import METHODS
from .base import Stage


def _keep(v):
    ok = lambda k: isinstance(k, (int, float)) and not isinstance(k, bool) and 0.0 < k <= 1.0  # noqa: E731
    if ok(v) or (isinstance(v, list) and v and all(ok(k) for k in v)):
        return None
    return "expected a fraction of tokens kept per block in (0, 1] (or a list, one per block)"


def _blocks(v):
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in v):
        return "expected a list of block indices"


class Tokens(Stage):
    kind = "tokens"
    base_fields = {
        "method": Field((str,), required=True, choices=METHODS),
        "keep": Field((float, list), check=_keep, help="a fraction kept per block (ToMe and PiToMe: in [0.5, 1]), or a "
                                                        "per-block list"),
        "r": Field((int,), lo=0, help="tokens removed per block (ToMe's r)"),
        "prop_attn": Field((bool,), default=True),
        "blocks": Field((list,), check=_blocks, help="a list of block indices that reduce (default all; [] none)"),
    }

    @property
    def fields(self):
        """The common keys plus every registered method's own (a plugin's method brings its keys along)."""
        out = dict(self.base_fields)
        for _, m in METHODS.items():
            out.update(m.fields)
        return out

    def needs(self, params):
        return {"model.vit": ""}

    def provides(self, params):
        return {"tokens"}

    def conflicts(self, params):
        return {"tokens"}

    def check(self, params, model, data, facts):
        if (params["keep"] is None) == (params["r"] is None):
            return ["give exactly one of keep (fraction kept per block) or r (tokens removed per block)"]
        keeps = params["keep"] if isinstance(params["keep"], list) else [params["keep"]] if params["keep"] else []
        if METHODS[params["method"]].bipartite and any(k < 0.5 for k in keeps):
            return [("keep", f"got {params['keep']!r}; {params['method']} pairs tokens, so a block keeps at least half "
                             "of them: expected a fraction in [0.5, 1]")]
        return []

    def apply(self, ctx, params):
        from ..tokens.patch import apply_token_reduction

        plan = apply_token_reduction(ctx.model, params)
        ctx.tokens = dict(params)
        return plan
