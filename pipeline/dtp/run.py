"""The dtp stage's work: masks on every pruned group, the mask phase, hard pruning with the shared channel
machinery, fine-tuning. Checkpoints every epoch; `run --resume` continues from the last one."""

from __future__ import annotations

import time

import torch
import torch.nn as nn
from tqdm import tqdm

from ..channels.affine import fold_affine
from ..channels.allocation import group_count, ratios_for
from ..channels.flops import FlopsModel
from ..channels.groups import GroupGraph
from ..channels.importance import criterion
from ..channels.shrink import Given, TopK, shrink_channels
from ..errors import OTCError
from ..training import loop
from ..training.checkpoints import Checkpoints
from ..training.distributed import dist_info, maybe_init_distributed, resolve_device
from ..training.finetune import finetune, make_wrap, training_data
from .masked import MaskedNet, mask_points
from .masks import TransportMasks


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
    latency = None
    if p.get("latency") is not None or p["round_to"] == "auto":
        from ..channels.latency import RUNTIMES

        RUNTIMES[p["latency_runtime"]].check()  # TensorRT not installed: said before any training
    if p.get("latency") is not None:  # a latency target as the FLOPs budget that lands on it at uniform keep
        p = dict(p, flops=latency_flops(model, ctx.example, groups, flops_model, p))
        latency = {"target": p["latency"], "flops_budget": p["flops"]}
    if p["round_to"] == "auto":
        from ..channels.latency import fast_multiple

        p = dict(p, round_to=fast_multiple(model, ctx.example, p["latency_threads"], p["latency_batch"],
                                           runtime=p["latency_runtime"], reach=p["flops"], exclude=p["exclude"],
                                           scope=p["scope"]))
    budget = p["flops"] is not None
    if budget:
        sel = list(range(len(groups)))
        keep0 = flops_model.uniform_keep(p["flops"], len(groups))
        keeps = [keep0] * len(groups)
    else:
        ratios = ratios_for(groups, p["sparsity"])
        counts0 = [group_count(g, r, p["round_to"]) for g, r in zip(groups, ratios)]
        sel = [i for i, c in enumerate(counts0) if c < groups[i].n]
        keeps = [c / g.n for g, c in zip(groups, counts0)]
    if not sel:
        raise OTCError("dtp: no group would shrink at this sparsity")
    imp = criterion(p["importance"])
    masks = TransportMasks([groups[i].n for i in sel], [keeps[i] for i in sel],
                           [imp(groups[i]) for i in sel], p["eps"])
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
    wrap_masked = make_wrap(distributed, device, p["compile"], sync_bn=False)
    steps = len(data[0]) // p["batch_size"]
    amp = device == "cuda"
    phase_done = state is not None and state["phase"] == "finetune"

    # ---- phase 1: mask learning -------------------------------------------------------------
    if not phase_done and p["mask_epochs"] > 0:
        masked = MaskedNet(model, masks, theta)
        hooks = masked.attach([mask_points(model, groups[i]) for i in sel])
        masked.to(device)
        net = wrap_masked(masked)
        score_params = [masks.scores] + ([theta] if budget else [])
        weights = list(model.parameters())
        opt = torch.optim.SGD([{"params": weights, "weight_decay": p["weight_decay"]},
                               {"params": score_params, "weight_decay": 0.0}],  # no decay on scores/budget logits
                              lr=p["lr"], momentum=p["momentum"])
        sched = loop.cosine(opt, p["mask_epochs"] * steps)
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
            loss = loop.train_epoch(net, opt, sched, data, epoch=ep, seed=p["seed"], batch_size=p["batch_size"], device=device,
                               amp=amp, augment_mode=p["augment"], extra_loss=penalty if budget else None,
                               progress=ctx.progress, status=status, desc="dtp masks")
            secs = time.perf_counter() - t0
            acc = loop.evaluate(masked, ex, ey, device) if ex is not None else None
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
            counts = [group_count(groups[i], 1 - c / groups[i].n) for i, c in zip(sel, counts)]
        else:
            counts = [counts0[i] for i in sel]
        keep = {}
        top = TopK()  # the hard mask: top of the soft mask in every chunk, frozen channels first
        for j, i in enumerate(sel):
            g = groups[i]
            m = masks.current[j, : g.n].clone()
            top.measured = {g.root: m.double()}
            keep[g.root] = top.plan(g, counts[j])[0].sort().values
            for pt in mask_points(model, g):
                fold_affine(pt.module, m, rows=pt.index[:, 0])
        ctx.record_shrink(shrink_channels(model, ctx.example, Given(keep), exclude=p["exclude"], scope=p["scope"],
                                          progress=False).maps)

    # ---- phase 2: fine-tuning ---------------------------------------------------------------
    extra_state = {"keep": {k: v.tolist() for k, v in keep.items()}}
    history = finetune(model, ctx, p, p["finetune_epochs"], data, (ex, ey), device,
                       ckpt, state if phase_done else None, history, extra_state, wrap, desc="dtp finetune")
    model.cpu().eval()
    if distributed:
        torch.distributed.barrier()
    if latency is not None:
        from ..channels.latency import measure_model

        latency["measured"] = measure_model(model, ctx.example, p["latency_threads"], p["latency_batch"],
                                            p["latency_runtime"]) / latency["dense_ms"]
        latency["miss"] = latency["measured"] / latency["target"] - 1
    return {"latency": latency, "groups": [{"group": k, "before": next(g.n for g in groups if g.root == k), "after": len(v),
                        "layers": next(g.layers for g in groups if g.root == k), "fused": False} for k, v in keep.items()],
            "history": history, "device": device, "world_size": world}


def latency_flops(model, example, groups, flops_model, p) -> float:
    """The FLOPs fraction whose uniform keep the calibrated latency model puts at the latency target."""
    from ..channels.latency import LayerTable, calibrated, refuse_below_floor

    table = LayerTable(p["latency_threads"], p["latency_batch"])
    lm = calibrated(model, example, groups, table, p["latency_threads"], p["latency_batch"], p["latency_runtime"],
                    exclude=p["exclude"], scope=p["scope"])
    refuse_below_floor(p["latency"], lm, p["latency_threads"], p["latency_batch"], runtime=p["latency_runtime"])
    dense = lm.measured_dense_ms
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(lm.ratio([mid] * len(groups))) < p["latency"] else (lo, mid)
    p["_dense_ms"] = dense
    return float(flops_model.ratio([hi] * len(groups)))
