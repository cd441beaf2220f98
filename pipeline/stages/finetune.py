"""Stage `finetune`: train the current (pruned, fused or token-reduced) model on [data].train, e.g. to compare
plain pruning or Intra-Fusion with DTP at the same training budget. Same loop, DDP and checkpoints."""

from ..recipe.schema import Field
from ..training.finetune import TRAIN_FIELDS, labelled
from .base import Stage


class Finetune(Stage):
    kind = "finetune"
    trains = True
    fields = {"epochs": Field((int,), default=10, lo=1), **TRAIN_FIELDS}

    def needs(self, params):
        return {"data.train": "finetune trains", "shrunk|tokens": "it fine-tunes a compressed model",
                "model.trainable": ""}

    def check(self, params, model, data, facts):
        return labelled(data)

    def apply(self, ctx, params):
        import torch

        from ..training.checkpoints import Checkpoints
        from ..training.distributed import dist_info, maybe_init_distributed, resolve_device
        from ..training.finetune import finetune, make_wrap, training_data

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
