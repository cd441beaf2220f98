"""The graph walk of the channel analysis: which channels are coupled, found on torch.export's graph.

Every tensor in the graph gets an integer array V, broadcastable to its shape, naming for each element the
channel variable it belongs to (-1: none, a size that pruning never changes: the image, padding, constants;
-2: none, but an extent that follows the channels, e.g. a statistic over them broadcast back). A conv or linear creates one fresh variable per output channel; what each op does
with V is its handler's business (ops.py, one OPS entry per op); elementwise ops between tensors couple the
variables that meet at the same position (residual adds, squeeze-excitation scales). Coupled variables are
merged in a union-find: each merged class is one channel that every layer touching it keeps or drops
together.

A channel is *frozen* (always kept) where removing it would break code that bakes sizes in: slices and
splits with constant bounds, the model's outputs, ops the analysis does not know. The reason is recorded,
so the report can say what was left whole and why. An exception inside a handler is a bug of the analysis,
not a property of the model: it is an internal error naming the op and the layer, never a silent freeze.

Torch-Pruning's graph does the same job by tracing autograd; it crashes on channel shuffle, hangs on
partial residuals and mis-indexes grouped convs and CSP splits, which this does not."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..errors import InternalError, OTCError
from ..where import at_layer
from .unionfind import UnionFind


@dataclass
class Use:
    """One layer's per-channel use of a tensor axis: position p of the axis belongs to variable vars[p].

    Roles: "out" (producer rows), "in" (consumer columns), "gin" (grouped-conv columns), "channel"
    (per-channel entries: norms, depthwise convs), "param" (a parameter used elementwise), "split" (a
    constraint without tensors: the positions fall into `groups` equal chunks that must keep equal counts),
    "attr" (a module attribute that stores the channel count: `tensors` names it, `dim` is its position in a
    tuple or -1 for an int; it is rewritten to the kept count)."""

    module: str
    role: str
    tensors: tuple[str, ...]
    dim: int
    vars: np.ndarray
    groups: int = 1
    order: int = 0


class ChannelVars(UnionFind):
    """The union-find of channel variables, with the reason each frozen variable must be kept."""

    def __init__(self):
        super().__init__()
        self.frozen: dict[int, str] = {}

    def freeze(self, ids, reason: str) -> None:
        for i in np.unique(np.asarray(ids).ravel()):
            if i >= 0 and int(i) not in self.frozen:
                self.frozen[int(i)] = reason

    def frozen_roots(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for i, why in self.frozen.items():
            out.setdefault(self.find(i), why)
        return out


def compress(v: np.ndarray) -> np.ndarray:
    """Reduce every axis along which v is constant to size 1 (its broadcast form)."""
    for d in range(v.ndim):
        if v.shape[d] > 1 and (v == v.take([0], axis=d)).all():
            v = v.take([0], axis=d)
    return np.ascontiguousarray(v)


FIXED, FOLLOWS = -1, -2


def none(shape, mark: int = FIXED) -> np.ndarray:
    """V of a tensor without channel variables (FIXED: its size never changes; FOLLOWS: it follows the channels)."""
    return np.full((1,) * len(shape or ()), mark, dtype=np.int64)


def shape_of(node) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


class Graph:
    """torch.export's graph of a model at one input shape, and what the analyses read from it: which module
    owns a parameter, in which module an op runs, an op's name."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        self.model = model
        try:
            with torch.no_grad():
                self.ep = torch.export.export(model.eval(), (example,), strict=False)
        except Exception as e:
            raise OTCError(f"{type(model).__name__}: torch.export cannot trace it, so its channels cannot be analysed "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})") from None
        sig = self.ep.graph_signature
        self.param_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                         **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
        self.nodes = list(self.ep.graph.nodes)
        self.users = {n: len(n.users) for n in self.nodes}

    def owner(self, node) -> tuple[str, str] | None:
        """(module name, attribute) of a parameter/buffer placeholder, else None."""
        if isinstance(node, torch.fx.Node) and node.op == "placeholder" and node.name in self.param_of:
            name, _, attr = self.param_of[node.name].rpartition(".")
            return name, attr
        return None

    # ops a layer may apply to its own weight before using it (weight standardization: reshape, batch_norm,
    # reshape_as): each keeps the weight's elements where they were, so the weight's channels are the parameter's
    WEIGHT_TRANSFORMS = ("reshape", "view", "_unsafe_view", "reshape_as", "batch_norm", "clone", "contiguous",
                         "_to_copy", "mul", "div", "sub", "add")

    def weight_owner(self, node) -> tuple[str, str] | None:
        """`owner`, or the parameter a computed weight is made from element by element (StdConv2d's standardized
        weight): followed back through WEIGHT_TRANSFORMS of its first argument to a parameter of the same shape."""
        hit = self.owner(node)
        if hit is not None or not isinstance(node, torch.fx.Node):
            return hit
        shape = tuple(getattr(node.meta.get("val"), "shape", ()))
        cur = node
        for _ in range(6):
            if cur.op != "call_function" or self.op(cur) not in self.WEIGHT_TRANSFORMS or not cur.args:
                return None
            cur = cur.args[0]
            if not isinstance(cur, torch.fx.Node):
                return None
            hit = self.owner(cur)
            if hit is not None:
                return hit if tuple(getattr(cur.meta.get("val"), "shape", ())) == shape else None
        return None

    @staticmethod
    def module_name(node) -> str:
        """The innermost module the op runs in ("" at the top level)."""
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""

    @staticmethod
    def op(node) -> str:
        """The op's name without overload: "conv2d", "add", "getitem"."""
        t = node.target
        if t is operator.getitem:
            return "getitem"
        return getattr(getattr(t, "overloadpacket", None), "__name__", None) or getattr(t, "__name__", str(t))

    def where(self, node) -> str:
        return self.module_name(node) or "the model"


@dataclass
class ChannelTrace:
    """The result: variable classes, every layer's uses, frozen reasons, parameters used elementwise."""

    uf: ChannelVars
    graph: Graph
    uses: list[Use] = field(default_factory=list)
    params: dict = field(default_factory=dict)  # (module, attr) -> V of a parameter used elementwise


class Tracer:
    """Walks the graph once in order, calling each op's handler (ops.OPS) to compute its output's V."""

    def __init__(self, model: nn.Module, example: torch.Tensor, output_names: list[str] | None = None):
        self.g = Graph(model, example)
        self.model = model
        self.uf = ChannelVars()
        self.V: dict = {}
        self.out_vars: dict[str, np.ndarray] = {}  # a module's output channels: the same variables at every call
        self.seen: dict[tuple, np.ndarray] = {}  # a layer's first use of each tensor axis
        self.res = ChannelTrace(self.uf, self.g)
        self.order = 0
        self.output_names = output_names

    # ---- what handlers use ----------------------------------------------------------------------
    def v(self, arg) -> np.ndarray:
        if isinstance(arg, torch.fx.Node):
            if arg not in self.V:
                self.V[arg] = self.placeholder(arg)
            return self.V[arg]
        return np.full((), -1, dtype=np.int64)  # a Python scalar

    def placeholder(self, node) -> np.ndarray:
        shape = shape_of(node) or ()
        if node.op == "placeholder" and node.name in self.g.param_of and len(shape):
            # a parameter used elementwise (layer scale, position embedding): one variable per element
            v = self.uf.new(int(np.prod(shape))).reshape(shape)
            self.res.params[self.g.owner(node)] = v
            return v
        return none(shape)

    def freeze_all(self, arrays, reason: str) -> None:
        for a in arrays:
            self.uf.freeze(a[a >= 0], reason)

    def along(self, v: np.ndarray, shape: tuple, dim: int, what: str) -> np.ndarray:
        """Per-position variables along `dim` of a tensor of `shape`; positions whose elements disagree
        (channels mixed across other axes) are frozen and read as -1."""
        dim %= len(shape)
        if v.ndim < len(shape):
            v = v.reshape((1,) * (len(shape) - v.ndim) + v.shape)
        if all(s == 1 for d, s in enumerate(v.shape) if d != dim):
            out = v.reshape(-1)
            return np.broadcast_to(out, (shape[dim],)).copy() if out.size == 1 else out.copy()
        full = np.moveaxis(np.broadcast_to(v, shape), dim, 0).reshape(shape[dim], -1)
        same = (full == full[:, :1]).all(1)
        if not same.all():
            self.uf.freeze(full[~same], f"{what}: channels mixed across other axes")
        return np.where(same, full[:, 0], -1)

    def use(self, module, role, tensors, dim, vars_, groups=1):
        """Record a layer's use of channels. A layer called more than once (a detection head shared by every
        pyramid level) reads the same weight positions each time: its positions' variables are coupled."""
        if module and tensors:  # only weight positions: constraints without tensors (a split) couple nothing
            key = (module, role, tuple(tensors), dim)
            prev = self.seen.get(key)
            if prev is not None and len(prev) == len(vars_):
                self.uf.union_pairs(np.asarray(prev), np.asarray(vars_))
            self.seen.setdefault(key, vars_)
        self.res.uses.append(Use(module, role, tuple(tensors), dim, vars_, groups, self.order))

    def produce(self, module: str, n: int) -> np.ndarray:
        if module not in self.out_vars:
            self.out_vars[module] = self.uf.new(n)
        return self.out_vars[module]

    def unknown(self, node, reason: str | None = None):
        """Freeze every channel reaching an op the analysis cannot follow, with the reason."""
        reason = reason or f"{self.g.op(node)} in {self.g.where(node)}"
        self.freeze_all([self.v(a) for a in node.all_input_nodes], f"not analysed: {reason}")
        val = node.meta.get("val")
        if isinstance(val, (list, tuple)):
            return [none(x.shape) if isinstance(x, torch.Tensor) else None for x in val]
        return none(shape_of(node))

    def stored_attr(self, node, value: int) -> list[tuple[str, str, int]]:
        """Attributes of the op's module (and its parents) that store `value`: (module, attr, tuple position or -1).
        A size the code keeps in an attribute must be rewritten when the channels it counts shrink."""
        name = self.g.module_name(node)
        mods = dict(self.model.named_modules())
        hits = []
        while True:
            m = mods.get(name)
            if m is not None:
                for k, a in vars(m).items():
                    if k.startswith("_") or isinstance(a, bool):
                        continue
                    if isinstance(a, int) and a == value:
                        hits.append((name, k, -1))
                    elif isinstance(a, (tuple, list)) and all(isinstance(x, int) for x in a) and value in a:
                        hits += [(name, k, i) for i, x in enumerate(a) if x == value]
            if hits or not name:
                return hits
            name = name.rpartition(".")[0]

    # ---- the pass -------------------------------------------------------------------------------
    def run(self, handlers) -> ChannelTrace:
        """Walk the graph with `handlers` (op name -> handler: the OPS registry)."""
        for node in self.g.nodes:
            self.order += 1
            if node.op == "placeholder":
                continue
            if node.op == "output":
                self.outputs(node)
                continue
            op = self.g.op(node)
            handler = handlers.get(op)
            if handler is None:
                self.V[node] = self.unknown(node)
                continue
            layer = self.g.module_name(node)
            at_layer(layer or None)
            try:
                self.V[node] = handler(self, node)
            except (OTCError, InternalError):
                raise
            except Exception as e:
                raise InternalError(f"channel analysis: the {op!r} handler failed at {layer or 'the top level'} "
                                    f"(node {node.name}): {type(e).__name__}: {str(e)[:200]}") from e
        at_layer(None)
        return self.res

    def outputs(self, node) -> None:
        flat = list(node.args[0]) if isinstance(node.args[0], (list, tuple)) else [node.args[0]]
        names = self.output_names if self.output_names and len(self.output_names) == len(flat) else None
        for i, a in enumerate(flat):
            if isinstance(a, torch.fx.Node):
                what = f"model output '{names[i]}'" if names else "model output (the logits)" if len(flat) == 1 \
                    else f"model output {i}"
                self.freeze_all([self.v(a)], what)
