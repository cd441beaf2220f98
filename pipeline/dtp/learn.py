"""The dtp stage's work: masks on every pruned group, the mask phase, hard pruning, fine-tuning."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from ..channels.allocation import ratios_for
from ..channels.flops import FlopsModel
from ..channels.allocation import kept_count
from ..channels.groups import Group, GroupGraph, Slice, is_depthwise
from ..channels.importance import criterion
from ..channels.shrink import Given, shrink_channels
from ..errors import OTCError
from .masks import TransportMasks
from .train import cosine, dist_info, evaluate, maybe_init_distributed, resolve_device, train_epoch


def mask_points(model: nn.Module, g: Group) -> list[Slice]:
    """Where a group's mask multiplies its channels: after BN (after the last depthwise conv's BN in
    inverted residuals, so the channel reaching the consumer is really scaled), else the producers. A
    point is a slice: its positions are the group's channels in that layer (a BN after a concat holds
    several groups' channels)."""
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    bns = [s for s in g.slices if isinstance(s.module, nn.modules.batchnorm._BatchNorm) and s.index.shape[1] == 1]
    dws = [s for s in g.slices if is_depthwise(s.module)]
    if bns:
        last_dw = max((order[s.name] for s in dws), default=-1)
        pts = [s for s in bns if order[s.name] > last_dw] or bns
    else:
        pts = dws[-1:] if dws else [s for s in g.slices if s.role == "out"]
    return pts


@torch.no_grad()
def fold_mask(point: Slice, m: torch.Tensor) -> None:
    """Scale a mask point's per-channel outputs by m for good (what MaskedNet did during training)."""
    module, pos = point.module, point.index[:, 0]
    for t in (module.weight, getattr(module, "bias", None)):
        if t is not None:
            t[pos] *= m.view((-1,) + (1,) * (t.dim() - 1)).to(t)


def allowed_count(g: Group, count: int) -> int:
    """The nearest count the group allows: a multiple of its chunks, at least its forced channels."""
    forced = int(g.forced.sum()) if g.forced is not None else 0
    per = max(1, round(count / g.n_chunks))
    return min(g.n, max(forced + (forced < g.n), per * g.n_chunks))


def hard_keep(g: Group, soft: torch.Tensor, count: int) -> torch.Tensor:
    """The kept channels: top of the soft mask, the same number in every chunk, forced channels first."""
    s = soft.double().clone()
    if g.forced is not None:
        s[g.forced] = torch.inf
    per = count // g.n_chunks
    return torch.cat([members[torch.argsort(s[members], descending=True, stable=True)[:per]].sort().values
                      for members in g.chunk_members()]).sort().values


class Checkpoints:
    """One training stage's checkpoint file (the stage's own: stages never share one)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self):
        return torch.load(self.path, map_location="cpu", weights_only=False) if self.path.exists() else None

    def save(self, state: dict) -> None:
        if dist_info()[0] != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


def finetune(model, ctx, p, epochs, data, evalset, device, ckpt, state, history, extra_state, wrap, desc="finetune"):
    """SGD with momentum and a cosine schedule; a checkpoint per epoch (phase 'finetune')."""
    steps = len(data[0]) // p["batch_size"]
    rank = dist_info()[0]
    model.to(device)
    net = wrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])
    sched = cosine(opt, epochs * steps)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["epoch"]
    ex, ey = evalset
    for ep in range(start, epochs):
        t0 = time.perf_counter()
        loss = train_epoch(net, opt, sched, data, epoch=1000 + ep, seed=p["seed"], batch_size=p["batch_size"],
                           device=device, amp=device == "cuda", augment_mode=p["augment"], progress=ctx.progress, desc=desc)
        secs = time.perf_counter() - t0
        acc = evaluate(model, ex, ey, device) if ex is not None else None
        history.append({"phase": "finetune", "epoch": ep + 1, "loss": loss, "eval_accuracy": acc, "seconds": secs})
        if ctx.progress and rank == 0:
            tqdm.write(f"{desc} epoch {ep + 1}: loss {loss:.4f}" + (f" eval acc {acc:.4f}" if acc is not None else ""))
        ckpt.save({"phase": "finetune", "epoch": ep + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                   "sched": sched.state_dict(), "history": history, **extra_state})
    return history


def make_wrap(distributed: bool, device: str, compile: bool = False):
    """DDP across processes; torch.compile on request (kernel fusion takes the masks' small ops into a few
    kernels; the first steps pay the compilation)."""
    def wrap(m):
        if distributed:
            if device == "cuda":  # (masks act on the BN modules: DTP keeps per-process BN on CUDA)
                m = m if isinstance(m, MaskedNet) else nn.SyncBatchNorm.convert_sync_batchnorm(m)
            m = nn.parallel.DistributedDataParallel(m, device_ids=[torch.cuda.current_device()] if device == "cuda" else None)
        return torch.compile(m) if compile else m

    return wrap


def training_data(ctx):
    train = ctx.dataset("train")
    if train.y is None:
        raise OTCError(f"{ctx.recipe.data['train']}: training needs labels (y)")
    evals = ctx.dataset("eval")
    norm = lambda x, idx: ctx.normalise(type(train)(x, None), idx)  # noqa: E731
    ex = ctx.normalise(evals) if evals is not None and evals.y is not None else None
    return (train.x, train.y, norm), (ex, evals.y if ex is not None else None)


def _affine_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine


class MaskedNet(nn.Module):
    """The net plus its masks (and budget logits): one module, so DDP and checkpoints see everything.
    Each training forward takes one proximal step for all masks and gathers every mask point's channels
    at once. At an affine BatchNorm, BN(x; w m, b m) = m BN(x; w, b): the masked affine parameters of all
    such points come from two multiplies and are swapped in with functional_call, a handful of small
    kernels per step instead of an activation-sized multiply and its two backward passes at each point.
    Other points (producers without BN) scale their output in a forward hook that reads `live`."""

    def __init__(self, net: nn.Module, masks: TransportMasks, theta: nn.Parameter | None):
        super().__init__()
        self.net, self.masks = net, masks
        self.theta = nn.ParameterList([theta]) if theta is not None else None
        self.live: tuple[torch.Tensor, ...] = ()  # the hooked points' masks, in hook order
        self._bns: list[tuple[str, nn.Module]] = []
        self._bn_sizes: list[int] = []
        self._hook_sizes: list[int] = []

    def compute(self) -> torch.Tensor:
        """(G, N) masks; one proximal step when training."""
        ks = torch.sigmoid(self.theta[0].double()) if self.theta is not None else None
        return self.masks(keep=ks, update=self.training)

    def forward(self, x):
        flat = self.compute().flatten()
        m = torch.cat([flat, flat.new_ones(1)]).index_select(0, self.point_index)  # every point's channels, BN points first
        if self._hook_sizes:
            amp = x.is_cuda and torch.is_autocast_enabled("cuda")
            bn_m, hook_m = m.split([sum(self._bn_sizes), sum(self._hook_sizes)])
            self.live = hook_m.to(torch.get_autocast_dtype("cuda") if amp else x.dtype).split(self._hook_sizes)
        else:
            bn_m = m  # (slicing would add a backward kernel per step)
        if not self._bns:
            return self.net(x)
        w = torch.cat([bn.weight for _, bn in self._bns]) * bn_m
        b = torch.cat([bn.bias for _, bn in self._bns]) * bn_m
        params = {f"{name}.{kind}": t for kind, ts in (("weight", w.split(self._bn_sizes)), ("bias", b.split(self._bn_sizes)))
                  for (name, _), t in zip(self._bns, ts)}
        return torch.func.functional_call(self.net, params, (x,))

    def attach(self, points: list[list[Slice]]) -> list:
        """Mask group j's channels at each of its points; returns the handles of the hooks it needed. Every
        masked layer gets one index over its channels into [all masks, 1]: channels of other groups (a BN
        after a concat) read the constant 1."""
        G, N = self.masks.valid.shape
        per: dict[str, tuple[nn.Module, torch.Tensor]] = {}
        for j, pts in enumerate(points):
            for s in pts:
                size = s.module.weight.shape[0]
                mod, idx = per.setdefault(s.name, (s.module, torch.full((size,), G * N, dtype=torch.long)))
                idx[s.index[:, 0]] = j * N + torch.arange(s.index.shape[0])
        bns = [(name, m, idx) for name, (m, idx) in per.items() if _affine_bn(m)]
        hooked = [(name, m, idx) for name, (m, idx) in per.items() if not _affine_bn(m)]
        self._bns = [(name, m) for name, m, _ in bns]
        self._bn_sizes = [len(idx) for *_, idx in bns]
        self._hook_sizes = [len(idx) for *_, idx in hooked]
        self.register_buffer("point_index", torch.cat([idx for *_, idx in bns + hooked]), persistent=False)

        def hook(i, last):
            def scale(mod, inp, out):  # channels on dim 1 (convs) or last (linear layers)
                m = self.live[i]
                return out * (m if last else m.view(1, -1, *([1] * (out.dim() - 2))))
            return scale

        return [m.register_forward_hook(hook(i, isinstance(m, nn.Linear))) for i, (_, m, _) in enumerate(hooked)]


def run_dtp(ctx, p: dict) -> dict:
    device = resolve_device(p["device"])
    distributed = maybe_init_distributed(device)
    rank, world = dist_info()
    if p["batch_size"] % world:
        raise OTCError(f"batch_size {p['batch_size']} is the global batch; it must divide by the {world} processes")
    torch.manual_seed(p["seed"])
    model = ctx.model.train()
    data, (ex, ey) = training_data(ctx)
    ckpt = Checkpoints(ctx.checkpoint("dtp"))
    state = ckpt.load() if ctx.resume else None

    graph = GroupGraph(model.eval(), ctx.example, exclude=p["exclude"], scope=p["scope"])
    groups = graph.groups()
    flops_model = FlopsModel(model, ctx.example, groups)
    budget = p["flops"] is not None
    if budget:
        sel = list(range(len(groups)))
        keep0 = flops_model.uniform_keep(p["flops"], len(groups))
        keeps = [keep0] * len(groups)
    else:
        ratios = ratios_for(groups, p["sparsity"])
        counts0 = [kept_count(g.n, r, p["round_to"], g.n_chunks, int(g.forced.sum()) if g.forced is not None else 0)
                   for g, r in zip(groups, ratios)]
        sel = [i for i, c in enumerate(counts0) if c < groups[i].n]
        keeps = [c / g.n for g, c in zip(groups, counts0)]
    if not sel:
        raise OTCError("dtp: no group would shrink at this sparsity")
    imp = criterion(p["importance"])
    masks = TransportMasks([groups[i].n for i in sel], [keeps[i] for i in sel],
                           [imp(groups[i]) for i in sel], p["eps"])  # sinkhorn_iters: no effect
    theta = nn.Parameter(torch.logit(torch.tensor([keeps[i] for i in sel], dtype=torch.float64)).float()) if budget else None
    history = []

    def flops_ratio(sel_keeps: torch.Tensor) -> torch.Tensor:
        """FLOPs fraction with these keep ratios on the masked groups (the others stay whole)."""
        idx = torch.tensor(sel, device=sel_keeps.device)
        full = torch.ones(len(groups), dtype=torch.float64, device=sel_keeps.device)
        return flops_model.ratio(full.index_copy(0, idx, sel_keeps.double()))

    def expected_flops() -> float:
        return float(flops_ratio(masks.current.double().sum(1) / masks.valid.sum(1)))

    def penalty():
        return (p["budget_weight"] * (flops_ratio(torch.sigmoid(theta.double())) - p["flops"]) ** 2).float()

    def status():
        return {"hard": f"{masks.hardness():.3f}", "flops": f"{expected_flops():.3f}"}

    wrap = make_wrap(distributed, device, p["compile"])
    steps = len(data[0]) // p["batch_size"]
    amp = device == "cuda"
    phase_done = state is not None and state["phase"] == "finetune"

    # ---- phase 1: mask learning -------------------------------------------------------------
    if not phase_done and p["mask_epochs"] > 0:
        masked = MaskedNet(model, masks, theta)
        hooks = masked.attach([mask_points(model, groups[i]) for i in sel])
        masked.to(device)
        net = wrap(masked)
        score_params = [masks.scores] + ([theta] if budget else [])
        weights = list(model.parameters())
        opt = torch.optim.SGD([{"params": weights, "weight_decay": p["weight_decay"]},
                               {"params": score_params, "weight_decay": 0.0}],  # no decay on scores/budget logits
                              lr=p["lr"], momentum=p["momentum"])
        sched = cosine(opt, p["mask_epochs"] * steps)
        start = 0
        if state is not None:
            try:
                masked.load_state_dict(state["model"])
            except RuntimeError as e:  # e.g. a checkpoint from before the closed-form masks (log_plan)
                raise OTCError(f"{ckpt.path}: cannot resume the mask phase from this checkpoint ({str(e).splitlines()[0]} "
                               f"...); it was written by a different otcompress version: run again without --resume "
                               f"(and --force)") from None
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            start, history = state["epoch"], state["history"]
        for ep in range(start, p["mask_epochs"]):
            t0 = time.perf_counter()
            loss = train_epoch(net, opt, sched, data, epoch=ep, seed=p["seed"], batch_size=p["batch_size"], device=device,
                               amp=amp, augment_mode=p["augment"], extra_loss=penalty if budget else None,
                               progress=ctx.progress, status=status, desc="dtp masks")
            secs = time.perf_counter() - t0
            acc = evaluate(masked, ex, ey, device) if ex is not None else None
            history.append({"phase": "mask", "epoch": ep + 1, "loss": loss, "eval_accuracy": acc,
                            "hardness": masks.hardness(), "flops": expected_flops(), "seconds": secs})
            if ctx.progress and rank == 0:
                tqdm.write(f"dtp masks epoch {ep + 1}: loss {loss:.4f} hardness {history[-1]['hardness']:.4f} "
                           f"flops {history[-1]['flops']:.3f}" + (f" eval acc {acc:.4f}" if acc is not None else ""))
            ckpt.save({"phase": "mask", "epoch": ep + 1, "model": masked.state_dict(), "opt": opt.state_dict(),
                       "sched": sched.state_dict(), "history": history})
        for h in hooks:
            h.remove()
        masked.cpu().eval()
        with torch.no_grad():
            masked.compute()

    elif not phase_done:  # no mask learning: masks from the initial (importance) scores alone
        with torch.no_grad():
            MaskedNet(model, masks, theta).eval().compute()

    # ---- hard masks -------------------------------------------------------------------------
    if phase_done:
        keep = {k: torch.tensor(v) for k, v in state["keep"].items()}
        ctx.record_shrink(shrink_channels(model, ctx.example, Given(keep), exclude=p["exclude"], scope=p["scope"],
                                          progress=False).maps)
        history = state["history"]
    else:
        if budget:
            counts = flops_model.fit_counts(theta.detach().double(), [groups[i].n for i in sel], p["flops"])
            counts = [allowed_count(groups[i], c) for i, c in zip(sel, counts)]
        else:
            counts = [counts0[i] for i in sel]
        keep = {}
        for j, i in enumerate(sel):
            g = groups[i]
            m = masks.current[j, : g.n].clone()
            keep[g.root] = hard_keep(g, m, counts[j])
            for pt in mask_points(model, g):
                fold_mask(pt, m)
        ctx.record_shrink(shrink_channels(model, ctx.example, Given(keep), exclude=p["exclude"], scope=p["scope"],
                                          progress=False).maps)

    # ---- phase 2: fine-tuning ---------------------------------------------------------------
    extra_state = {"keep": {k: v.tolist() for k, v in keep.items()}}
    history = finetune(model, ctx, p, p["finetune_epochs"], data, (ex, ey), device,
                       ckpt, state if phase_done else None, history, extra_state, wrap, desc="dtp finetune")
    model.cpu().eval()
    if distributed:
        torch.distributed.barrier()
    return {"groups": [{"group": k, "before": next(g.n for g in groups if g.root == k), "after": len(v),
                        "layers": next(g.layers for g in groups if g.root == k), "fused": False} for k, v in keep.items()],
            "history": history, "device": device, "world_size": world}
