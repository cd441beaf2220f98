"""Stage `tokens`: static-ratio token reduction (ToMe / PiToMe / OTPrune) in every transformer block."""

from ..errors import OTCError
from ..schema import Field
from .base import Stage


def _keep(v):
    ok = lambda k: isinstance(k, (int, float)) and not isinstance(k, bool) and 0.5 <= k <= 1.0  # noqa: E731
    if ok(v) or (isinstance(v, list) and v and all(ok(k) for k in v)):
        return None
    return "expected a fraction of tokens kept per block in [0.5, 1] (or a list, one per block)"


def _blocks(v):
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in v):
        return "expected a list of block indices"


class Tokens(Stage):
    kind = "tokens"
    fields = {
        "method": Field((str,), required=True, choices=("tome", "pitome", "otprune")),
        "keep": Field((float, list), check=_keep, help="a fraction in [0.5, 1] kept per block, or a per-block list"),
        "r": Field((int,), lo=0, help="tokens removed per block (ToMe's r)"),
        "prop_attn": Field((bool,), default=True),
        "margin": Field((float,), default=0.9, lo=0.0, hi=1.0, help="PiToMe's m0 (margin m_l = m0 - m0*l/L)"),
        "alpha": Field((float,), default=1.0, lo=0.0),
        "gamma": Field((float,), default=0.01, lo=0.0, hi_open=False, help="OTPrune kernel scale (K = I + gamma*S*S^T)"),
        "mode": Field((str,), default="drop", choices=("drop", "merge")),
        "blocks": Field((list,), check=_blocks, help="a list of block indices that reduce (default all)"),
    }

    def needs(self, params, model, data):
        if (params["keep"] is None) == (params["r"] is None):
            return ["give exactly one of keep (fraction kept per block) or r (tokens removed per block)"]
        return []

    def apply(self, ctx, params):
        from ..tokens.patch import apply_token_reduction

        if ctx.meta.get("tokens"):
            raise OTCError("the model already has a tokens stage; use one per recipe")
        plan = apply_token_reduction(ctx.model, params)
        ctx.meta["tokens"] = dict(params)
        return plan
