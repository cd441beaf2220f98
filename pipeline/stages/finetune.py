"""Stage `finetune`: train the current (pruned or fused) model on [data].train, e.g. to compare plain
pruning or Intra-Fusion with DTP at the same training budget. Same loop, DDP and checkpoints as dtp."""

from ..recipe.schema import Field
from .base import Stage
from .dtp import DTP, labelled

TRAIN_KEYS = ("lr", "momentum", "weight_decay", "batch_size", "device", "seed", "augment", "compile")


class Finetune(Stage):
    kind = "finetune"
    trains = True
    fields = {"epochs": Field((int,), default=10, lo=1), **{k: DTP.fields[k] for k in TRAIN_KEYS}}

    def needs(self, params):
        return {"data.train": "finetune trains", "shrunk|tokens": "it fine-tunes a compressed model"}

    def check(self, params, model, data, facts):
        return labelled(data)

    def apply(self, ctx, params):
        import torch

        from ..dtp.learn import Checkpoints, finetune, make_wrap, training_data
        from ..dtp.train import dist_info, maybe_init_distributed, resolve_device

        device = resolve_device(params["device"])
        distributed = maybe_init_distributed(device)
        torch.manual_seed(params["seed"])
        data, evalset = training_data(ctx)
        ckpt = Checkpoints(ctx.checkpoint(self.kind))
        state = ckpt.load() if ctx.resume else None
        if state is not None and state.get("phase") != "finetune":
            state = None
        history = finetune(ctx.model, ctx, params, params["epochs"], data, evalset, device, ckpt, state,
                           state["history"] if state else [], {}, make_wrap(distributed, device, params["compile"]))
        ctx.model.cpu().eval()
        if distributed:
            torch.distributed.barrier()
        return {"history": history, "device": device, "world_size": dist_info()[1]}
