"""Per-step cost of the transport masks: one SGD step of CIFAR ResNet-56 (batch 128, bf16 autocast on GPU)
with all 27 block-internal groups masked (one batched proximal step per training step) vs without, in eager
mode and (--compile) with torch.compile on both sides, as the dtp stage's `compile = true` runs. Eagerly it
also counts the operators one step dispatches (views excluded; each is a kernel launch on a GPU): a small
CIFAR net on a GPU is bound by that dispatch, so the op overhead predicts the time overhead there, and
it can be checked on any machine (the H100's +55% came with +51% ops).

    python bench/dtp_overhead.py [--steps 100] [--batch 128] [--compile]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from common import OpCount, save

from otcompress.dtp.masks import TransportMasks
from otcompress.dtp.masked import MaskedNet, mask_points
from otcompress.channels.groups import GroupGraph
from otcompress.channels.importance import criterion
from otcompress.models import build_model

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=100)
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--compile", action="store_true")
args = ap.parse_args()
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.backends.cudnn.benchmark = True


def stepper(model, params):
    """A warmed-up training step of `model` and the operators it dispatches (eager only)."""
    model = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)

    def step():
        with torch.autocast("cuda", torch.bfloat16, enabled=dev == "cuda"):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(30 if args.compile else 10):  # compilation (and its recompile once masks are warm)
        step()
    counter = OpCount()
    if not args.compile:
        with counter:
            step()
    return step, counter.ops


def ms_per_step(step, n):
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0) / n


plain = build_model("cifar_resnet56").to(dev).train()
base_step, base_ops = stepper(plain, list(plain.parameters()))
net = build_model("cifar_resnet56").train()
groups = GroupGraph(net.eval(), torch.zeros(1, 3, 32, 32)).groups()
masks = TransportMasks([g.n for g in groups], [0.5] * len(groups), [criterion("l1")(g) for g in groups])
masked = MaskedNet(net.train(), masks, None)
masked.attach([mask_points(net, g) for g in groups])
masked.to(dev).train()
mask_step, mask_ops = stepper(masked, list(masked.parameters()))
rounds = max(1, min(5, args.steps))  # interleaved, so drift on a shared machine hits both alike
times = [(ms_per_step(base_step, args.steps // rounds), ms_per_step(mask_step, args.steps // rounds)) for _ in range(rounds)]
base_ms, mask_ms = (statistics.median(t) for t in zip(*times))
res = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "batch": args.batch, "groups": len(groups),
       "compiled": args.compile, "torch": torch.__version__, "rounds": rounds,
       "step_ms_without_masks": base_ms, "step_ms_with_masks": mask_ms, "overhead": mask_ms / base_ms - 1}
if not args.compile:
    nb, nm = sum(base_ops.values()), sum(mask_ops.values())
    res.update(ops_without_masks=nb, ops_with_masks=nm, op_overhead=nm / nb - 1,
               extra_ops=dict((mask_ops - base_ops).most_common()))
print(res)
save(f"dtp_overhead_b{args.batch}{'' if dev == 'cuda' else '_cpu'}{'_compiled' if args.compile else ''}.json", res)
