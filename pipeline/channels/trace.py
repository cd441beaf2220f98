"""Which channels are coupled, found on torch.export's graph of the model.

Every tensor in the graph gets an integer array V, broadcastable to its shape, naming for each element the
channel variable it belongs to (-1: none, i.e. a size that pruning never changes: the image, padding,
constants). A conv or linear creates one fresh variable per output channel; ops that keep channels pass V
through (activations, pooling, norms, depthwise convs); elementwise ops between tensors couple the variables
that meet at the same position (residual adds, squeeze-excitation scales); cat and split and flatten move
them around. Coupled variables are merged in a union-find: each merged class is one channel that every
layer touching it must keep or drop together.

A channel is *frozen* (always kept) where removing it would break code that bakes sizes in: slices and splits
with constant bounds, reshapes that split the channel axis (channel shuffle), the model's input and output,
ops this analysis does not know. The reason is recorded, so the report can say what was left whole and why.
Torch-Pruning's graph does the same job by tracing autograd; it crashes on channel shuffle, hangs on
partial residuals and mis-indexes grouped convs and CSP splits, which this does not."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..errors import OTCError


@dataclass
class Use:
    """One layer's per-channel use of a tensor axis: position p of the axis belongs to variable vars[p]."""

    module: str  # owner module name
    role: str  # "out" (producer rows), "in" (consumer columns), "gin" (grouped-conv columns), "channel", "param"
    tensors: tuple[str, ...]  # the module's tensors indexed along `dim`
    dim: int
    vars: np.ndarray  # (positions,) variable ids, -1 where the position has none
    groups: int = 1  # grouped convs and GroupNorm: positions fall into this many equal chunks
    order: int = 0  # graph order of the op (the first producer of a group is its root)


@dataclass
class Fold:
    """A BatchNorm whose only input is a conv/linear output that nothing else reads."""

    layer: str
    bn: str


class UnionFind:
    def __init__(self):
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        keep = (a >= 0) & (b >= 0) & (a != b)
        if keep.any():
            for x, y in np.unique(np.stack([a[keep], b[keep]], 1), axis=0):
                self.union(int(x), int(y))

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


def _shape(node) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


UNARY = {
    "relu", "relu_", "relu6", "silu", "silu_", "gelu", "gelu_", "sigmoid", "sigmoid_", "hardswish", "hardswish_",
    "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "tanh", "tanh_", "elu", "elu_",
    "selu", "selu_", "celu", "mish", "mish_", "softplus", "clone", "contiguous", "alias", "dropout", "dropout_",
    "feature_dropout", "alpha_dropout", "native_dropout", "_to_copy", "to", "detach", "neg", "abs", "exp", "log", "sqrt",
    "rsqrt", "square", "reciprocal", "erf", "clamp", "clamp_", "clamp_min", "clamp_max", "nan_to_num", "softmax",
    "log_softmax", "_softmax", "_log_softmax", "type_as", "lift_fresh_copy", "sign", "floor", "ceil", "round",
    "max_pool2d", "max_pool1d", "max_pool3d", "avg_pool2d", "avg_pool1d", "avg_pool3d", "adaptive_avg_pool2d",
    "adaptive_avg_pool1d", "adaptive_avg_pool3d", "adaptive_max_pool2d", "max_pool2d_with_indices",
    "upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_nearest_exact2d",
    "_upsample_bilinear2d_aa", "reflection_pad2d", "replication_pad2d", "fill_", "zero_", "_assert_tensor_metadata",
}
BINARY = {"add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "maximum", "minimum", "pow", "where",
          "addcmul", "addcdiv", "lerp", "fmod", "remainder", "eq", "ne", "gt", "ge", "lt", "le", "logical_and",
          "logical_or", "copy_"}
REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "var_mean", "std_mean", "logsumexp", "prod", "norm",
          "linalg_vector_norm", "max", "min"}
SHAPE_FREE = {"_assert_tensor_metadata", "sym_size", "sym_numel", "_assert_scalar"}


@dataclass
class ChannelTrace:
    """The result: variable classes, every layer's uses, BatchNorms that can be folded, frozen reasons."""

    uf: UnionFind
    uses: list[Use] = field(default_factory=list)
    folds: list[Fold] = field(default_factory=list)
    unfoldable: list[tuple[str, str]] = field(default_factory=list)  # (bn name, reason)
    params: dict = field(default_factory=dict)  # (module, attr) -> V of a parameter used elementwise


class Tracer:
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
        self.user_inputs = set(sig.user_inputs)
        self.uf = UnionFind()
        self.V: dict = {}
        self.out_vars: dict[str, np.ndarray] = {}  # a module's output channels: the same variables at every call
        self.res = ChannelTrace(self.uf)
        self.order = 0

    # ---- helpers --------------------------------------------------------------------------------
    def owner(self, node) -> tuple[str, str] | None:
        """(module name, attribute) of a parameter/buffer placeholder."""
        if isinstance(node, torch.fx.Node) and node.op == "placeholder" and node.name in self.param_of:
            name, _, attr = self.param_of[node.name].rpartition(".")
            return name, attr
        return None

    def module_name(self, node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""

    def v(self, arg) -> np.ndarray:
        if isinstance(arg, torch.fx.Node):
            if arg not in self.V:
                self.V[arg] = self.placeholder(arg)
            return self.V[arg]
        return np.full((), -1, dtype=np.int64)  # a Python scalar

    def placeholder(self, node) -> np.ndarray:
        shape = _shape(node) or ()
        if node.op == "placeholder" and node.name in self.param_of and len(shape):
            # a parameter used elementwise (layer scale, position embedding): one variable per element
            v = self.uf.new(int(np.prod(shape))).reshape(shape)
            self.res.params[self.owner(node)] = v
            return v
        return np.full((1,) * len(shape), -1, dtype=np.int64)

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
        self.res.uses.append(Use(module, role, tuple(tensors), dim, vars_, groups, self.order))

    def produce(self, module: str, n: int) -> np.ndarray:
        if module not in self.out_vars:
            self.out_vars[module] = self.uf.new(n)
        return self.out_vars[module]

    # ---- the pass -------------------------------------------------------------------------------
    def run(self) -> ChannelTrace:
        users = {n: len(n.users) for n in self.ep.graph.nodes}
        for node in self.ep.graph.nodes:
            self.order += 1
            if node.op == "placeholder":
                continue
            if node.op == "output":
                self.freeze_all([self.v(a) for a in node.all_input_nodes], "model output (the logits)")
                continue
            try:
                self.V[node] = self.visit(node, users)
            except OTCError:
                raise
            except Exception as e:  # an op form this analysis does not expect: freeze around it, say where
                self.unknown(node, f"{self.op(node)} in {self.module_name(node) or 'the model'} "
                                   f"({type(e).__name__}: {str(e)[:80]})")
        return self.res

    @staticmethod
    def op(node) -> str:
        t = node.target
        if t is operator.getitem:
            return "getitem"
        return getattr(getattr(t, "overloadpacket", None), "__name__", None) or getattr(t, "__name__", str(t))

    def unknown(self, node, reason=None):
        reason = reason or f"{self.op(node)} in {self.module_name(node) or 'the model'}"
        ins = [a for a in node.all_input_nodes]
        self.freeze_all([self.v(a) for a in ins], f"not analysed: {reason}")
        val = node.meta.get("val")
        if isinstance(val, (list, tuple)):
            return [np.full((1,) * len(x.shape), -1, dtype=np.int64) if isinstance(x, torch.Tensor) else None for x in val]
        shape = _shape(node)
        self.V[node] = np.full((1,) * len(shape or ()), -1, dtype=np.int64)
        return self.V[node]

    def visit(self, node, users):
        op, args = self.op(node), node.args
        if op == "getitem":
            src = self.V.get(args[0])
            return src[args[1]] if isinstance(src, list) else self.unknown(node)
        if op in SHAPE_FREE:
            return None
        if op in ("conv2d", "conv1d", "conv3d", "convolution"):
            return self.conv(node)
        if op == "linear":
            return self.linear(node)
        if op in ("batch_norm", "_native_batch_norm_legit_no_training", "instance_norm"):
            return self.batch_norm(node, users)
        if op == "layer_norm":
            return self.layer_norm(node)
        if op == "group_norm":
            return self.group_norm(node)
        if op in ("prelu", "_prelu_kernel"):
            return self.prelu(node)
        if op in REDUCE and len(args) >= 2 and isinstance(args[1], (list, tuple, int)):
            return self.reduce(node)
        if op in ("max", "min") and len(node.all_input_nodes) == 2:  # the elementwise forms
            return self.elementwise(node, list(node.all_input_nodes))
        if op in ("view", "reshape", "_unsafe_view", "flatten", "unflatten"):
            return self.reshape(node)
        if op in ("permute", "transpose", "t", "squeeze", "unsqueeze", "expand", "expand_as"):
            return self.move(node)
        if op in ("slice", "narrow"):
            return self.slice(node)
        if op in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split"):
            return self.split(node)
        if op in ("cat", "concat", "stack"):
            return self.cat(node, stack=op == "stack")
        if op in ("pad", "constant_pad_nd"):
            return self.pad(node)
        tensors = [a for a in node.all_input_nodes]
        if op in UNARY or (op in BINARY and len(tensors) <= 1):
            if not tensors:
                return np.full((1,) * len(_shape(node) or ()), -1, dtype=np.int64)
            v = self.v(tensors[0])
            val = node.meta.get("val")
            if isinstance(val, (list, tuple)):  # max_pool2d_with_indices, adaptive_max_pool2d
                return [v, v]
            return v
        if op in BINARY:
            return self.elementwise(node, tensors)
        return self.unknown(node)

    # ---- layers ---------------------------------------------------------------------------------
    def conv(self, node):
        x, w = node.args[0], node.args[1]
        b = node.args[2] if len(node.args) > 2 else None
        if self.op(node) == "convolution":
            transposed, groups = node.args[6], node.args[8]
            if transposed:
                return self.unknown(node, f"transposed convolution in {self.module_name(node)}")
        else:
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        own = self.owner(w)
        if own is None:
            return self.unknown(node, f"convolution with a computed weight in {self.module_name(node)}")
        mod = own[0]
        xs, ws = _shape(x), _shape(w)
        cin, cout = xs[1], ws[0]
        vin = self.along(self.v(x), xs, 1, mod)
        tensors = ("weight",) + (("bias",) if b is not None else ())
        if groups > 1 and groups == cin == cout:  # depthwise: its rows are its input channels
            self.use(mod, "channel", tensors, 0, vin)
            return vin.reshape((1, cout) + (1,) * (len(xs) - 2))
        self.use(mod, "gin" if groups > 1 else "in", ("weight",), 1, vin, groups)
        vout = self.produce(mod, cout)
        self.use(mod, "out", tensors, 0, vout, groups)
        return vout.reshape((1, cout) + (1,) * (len(xs) - 2))

    def linear(self, node):
        x, w = node.args[0], node.args[1]
        b = node.args[2] if len(node.args) > 2 else None
        own = self.owner(w)
        if own is None:
            return self.unknown(node, f"linear with a computed weight in {self.module_name(node)}")
        mod = own[0]
        xs = _shape(x)
        vin = self.along(self.v(x), xs, -1, mod)
        self.use(mod, "in", ("weight",), 1, vin)
        cout = _shape(w)[0]
        vout = self.produce(mod, cout)
        self.use(mod, "out", ("weight",) + (("bias",) if b is not None else ()), 0, vout)
        return vout.reshape((1,) * (len(xs) - 1) + (cout,))

    def batch_norm(self, node, users):
        x = node.args[0]
        params = node.args[1:5]
        owners = [self.owner(p) for p in params]
        mods = {o[0] for o in owners if o}
        v = self.v(x)
        xs = _shape(x)
        if mods:
            mod = mods.pop()
            vin = self.along(v, xs, 1, mod)
            self.use(mod, "channel", tuple(o[1] for o in owners if o), 0, vin)
            self.fold_candidate(node, x, mod, users)
        val = node.meta.get("val")
        return [v, None, None] if isinstance(val, (list, tuple)) else v

    def fold_candidate(self, node, x, bn, users):
        src = x.target if isinstance(x, torch.fx.Node) else None
        name = self.op(x) if isinstance(x, torch.fx.Node) and x.op == "call_function" else ""
        if name in ("conv2d", "conv1d", "conv3d", "linear") and users.get(x, 0) == 1 and src is not None:
            own = self.owner(x.args[1])
            if own is not None:
                self.res.folds.append(Fold(own[0], bn))
                return
            why = "its conv/linear has a computed weight"
        elif name in ("conv2d", "conv1d", "conv3d", "linear"):
            why = "its conv/linear output is also read elsewhere"
        else:
            why = f"its input comes from {name or 'the model input'}, not a conv/linear"
        self.res.unfoldable.append((bn, why))

    def layer_norm(self, node):
        x, shape = node.args[0], node.args[1]
        w = node.args[2] if len(node.args) > 2 else None
        b = node.args[3] if len(node.args) > 3 else None
        v = self.v(x)
        xs = _shape(x)
        own = [o for o in (self.owner(w), self.owner(b)) if o]
        mod = own[0][0] if own else self.module_name(node)
        if len(shape) == 1 and mod:
            self.use(mod, "channel", tuple(o[1] for o in own), 0, self.along(v, xs, -1, mod))
        else:
            self.freeze_all([v], f"layer norm over {len(shape)} axes in {mod or 'the model'}")
        return v

    def group_norm(self, node):
        x, groups = node.args[0], node.args[1]
        w = node.args[2] if len(node.args) > 2 else None
        b = node.args[3] if len(node.args) > 3 else None
        v = self.v(x)
        own = [o for o in (self.owner(w), self.owner(b)) if o]
        if own:
            mod = own[0][0]
            self.use(mod, "channel", tuple(o[1] for o in own), 0, self.along(v, _shape(x), 1, mod), groups)
        return v

    def prelu(self, node):
        x, w = node.args[0], node.args[1]
        v = self.v(x)
        own = self.owner(w)
        if own and _shape(w) and _shape(w)[0] > 1:
            self.use(own[0], "channel", (own[1],), 0, self.along(v, _shape(x), 1, own[0]))
        return v

    # ---- elementwise and reductions -------------------------------------------------------------
    def elementwise(self, node, tensors):
        shapes = [_shape(t) for t in tensors]
        out_shape = _shape(node)
        nd = len(out_shape)
        vs = [self.v(t) for t in tensors]
        vs = [v.reshape((1,) * (nd - v.ndim) + v.shape) for v in vs]
        shapes = [(1,) * (nd - len(s)) + tuple(s) for s in shapes]
        common = np.broadcast_shapes(*[v.shape for v in vs])
        full = [np.broadcast_to(v, common) for v in vs]
        for i, a in enumerate(full):
            for j, b in enumerate(full):
                if i < j:
                    self.uf.union_pairs(a.ravel(), b.ravel())
                if i == j:
                    continue
                # a's channel axes must shrink in b too: where b is not broadcast but has no variable, freeze a's
                a_dims = [d for d in range(nd) if vs[i].shape[d] > 1]
                if any(shapes[j][d] > 1 for d in a_dims):
                    self.uf.freeze(a[(a >= 0) & (b < 0)], f"{self.op(node)} with a fixed-size tensor in "
                                                          f"{self.module_name(node) or 'the model'}")
        out = full[0].copy()
        for f in full[1:]:
            out = np.where(out >= 0, out, f)
        return compress(out)

    def reduce(self, node):
        x = node.args[0]
        dims = node.args[1]
        dims = [dims] if isinstance(dims, int) else list(dims)
        keep = bool(node.args[2]) if len(node.args) > 2 and isinstance(node.args[2], bool) else node.kwargs.get("keepdim", False)
        v = self.v(x)
        nd = len(_shape(x))
        v = v.reshape((1,) * (nd - v.ndim) + v.shape)
        dims = [d % nd for d in dims]
        for d in dims:  # a statistic over channels (a hand-written LayerNorm) uses them without fixing their count
            if v.shape[d] > 1:
                v = np.full([1 if k == d else s for k, s in enumerate(v.shape)], -1, dtype=np.int64)
        if not keep:
            v = v.reshape([s for d, s in enumerate(v.shape) if d not in dims])
        out = v
        if isinstance(node.meta.get("val"), (list, tuple)):
            return [out, out]
        return out

    # ---- shape ops ------------------------------------------------------------------------------
    def reshape(self, node):
        x = node.args[0]
        v, xs, ys = self.v(x), _shape(x), _shape(node)
        v = v.reshape((1,) * (len(xs) - v.ndim) + v.shape)
        in_dims = [d for d in range(len(xs)) if v.shape[d] > 1]
        if not in_dims:
            return np.full((1,) * len(ys), -1, dtype=np.int64) if (v < 0).all() else \
                np.broadcast_to(v.reshape(-1)[:1], (1,) * len(ys)).copy()
        out = compress(np.broadcast_to(v, xs).reshape(ys))
        out_dims = [d for d in range(len(ys)) if out.shape[d] > 1]
        if len(in_dims) == 1 and len(out_dims) == 1:
            a = self.along(v, xs, in_dims[0], "reshape")
            b = self.along(out, ys, out_dims[0], "reshape")
            if len(b) % len(a) == 0 and np.array_equal(np.repeat(a, len(b) // len(a)), b):
                return out  # flatten: each channel becomes a contiguous block of features
            if len(a) % len(b) == 0 and np.array_equal(np.repeat(b, len(a) // len(b)), a):
                return out  # unflatten
        self.freeze_all([v], f"reshape {list(xs)} -> {list(ys)} splits or mixes the channel axis "
                             f"(channel shuffle?) in {self.module_name(node) or 'the model'}")
        return np.full((1,) * len(ys), -1, dtype=np.int64)

    def move(self, node):
        op, x = self.op(node), node.args[0]
        v, xs, ys = self.v(x), _shape(x), _shape(node)
        v = v.reshape((1,) * (len(xs) - v.ndim) + v.shape)
        if op == "permute":
            return v.transpose(node.args[1])
        if op == "transpose":
            return np.swapaxes(v, node.args[1], node.args[2])
        if op == "t":
            return v.T
        if op in ("expand", "expand_as"):
            return v.reshape((1,) * (len(ys) - v.ndim) + v.shape)
        # squeeze / unsqueeze: the output has the same elements; squeezed axes have size 1 in both
        if op == "squeeze":
            dims = node.args[1] if len(node.args) > 1 else [d for d in range(len(xs)) if xs[d] == 1]
            dims = [dims] if isinstance(dims, int) else list(dims)
            dims = [d % len(xs) for d in dims if xs[d % len(xs)] == 1]
            return v.reshape([s for d, s in enumerate(v.shape) if d not in dims])
        return np.expand_dims(v, node.args[1] % (len(xs) + 1))

    def slice(self, node):
        x = node.args[0]
        v, xs = self.v(x), _shape(x)
        v = v.reshape((1,) * (len(xs) - v.ndim) + v.shape)
        if self.op(node) == "narrow":
            dim, start, length = node.args[1], node.args[2], node.args[3]
            end, step = start + length, 1
        else:
            dim = node.args[1] if len(node.args) > 1 else 0
            start = node.args[2] if len(node.args) > 2 and node.args[2] is not None else 0
            end = node.args[3] if len(node.args) > 3 and node.args[3] is not None else xs[dim % len(xs)]
            step = node.args[4] if len(node.args) > 4 else 1
        dim %= len(xs)
        n = xs[dim]
        start, end = max(0, start + n if start < 0 else start), min(n, end + n if end < 0 else end)
        if v.shape[dim] == 1:
            return v
        vars_ = self.along(v, xs, dim, "slice")
        where = self.module_name(node) or "the model"
        if step != 1:
            self.uf.freeze(vars_, f"strided slice of channels in {where}")
        elif end < n:
            self.uf.freeze(vars_[:end], f"slice [{start}:{end}] of {n} channels in {where} (fixed bounds)")
        else:
            self.uf.freeze(vars_[:start], f"slice [{start}:] of {n} channels in {where} (fixed start)")
        return np.take(v, range(start, end, step), axis=dim)

    def split(self, node):
        op, x = self.op(node), node.args[0]
        v, xs = self.v(x), _shape(x)
        v = v.reshape((1,) * (len(xs) - v.ndim) + v.shape)
        outs = node.meta["val"]
        if op == "chunk":
            dim = node.args[2] if len(node.args) > 2 else 0
        elif op == "unbind":
            dim = node.args[1] if len(node.args) > 1 else 0
        else:
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        dim %= len(xs)
        sizes = [o.shape[dim] if op != "unbind" else 1 for o in outs]
        if v.shape[dim] == 1:
            pieces = [v] * len(outs)
        else:
            vars_ = self.along(v, xs, dim, "split")
            where = self.module_name(node) or "the model"
            if op == "split" and isinstance(node.args[1], int) and len(sizes) > 1:
                self.uf.freeze(vars_[:sum(sizes[:-1])], f"split of {xs[dim]} channels into pieces of {node.args[1]} "
                                                        f"in {where} (fixed sizes)")
            else:
                self.uf.freeze(vars_, f"{op} of {xs[dim]} channels in {where} (pieces must keep their sizes)")
            bounds = np.cumsum([0] + sizes)
            pieces = [np.take(v, range(bounds[i], bounds[i + 1]), axis=dim) for i in range(len(outs))]
        if op == "unbind":
            pieces = [p.reshape([s for d, s in enumerate(p.shape) if d != dim]) for p in pieces]
        return pieces

    def cat(self, node, stack=False):
        xs_nodes = list(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        ys = _shape(node)
        nd = len(ys)
        vs, shapes = [], []
        for t in xs_nodes:
            s = list(_shape(t))
            v = self.v(t)
            if stack:
                s.insert(dim % nd, 1)
                v = np.expand_dims(v.reshape((1,) * (len(s) - 1 - v.ndim) + v.shape), dim % nd)
            vs.append(v.reshape((1,) * (nd - v.ndim) + v.shape))
            shapes.append(s)
        dim %= nd
        # channels of the pieces meet position by position along the other axes: couple them
        profiles = [compress(np.moveaxis(v, dim, 0).reshape(v.shape[dim], -1)[:1]) if v.shape[dim] == 1 else None
                    for v in vs]
        full = [p for p in profiles if p is not None]
        for a, b in zip(full, full[1:]):
            c = np.broadcast_shapes(a.shape, b.shape)
            self.uf.union_pairs(np.broadcast_to(a, c).ravel(), np.broadcast_to(b, c).ravel())
        other = [max(v.shape[d] for v in vs) if d != dim else None for d in range(nd)]
        parts = [np.broadcast_to(v, [s[dim] if d == dim else other[d] for d in range(nd)]) for v, s in zip(vs, shapes)]
        return compress(np.concatenate(parts, axis=dim))

    def pad(self, node):
        x, pads = node.args[0], node.args[1]
        v, xs = self.v(x), _shape(x)
        v = v.reshape((1,) * (len(xs) - v.ndim) + v.shape)
        nd = len(xs)
        for i in range(len(pads) // 2):
            d = nd - 1 - i
            lo, hi = pads[2 * i], pads[2 * i + 1]
            if (lo or hi) and v.shape[d] > 1:
                if lo < 0 or hi < 0:
                    self.uf.freeze(v, f"cropping pad on channels in {self.module_name(node) or 'the model'}")
                    return np.full((1,) * nd, -1, dtype=np.int64)
                full = np.broadcast_to(v, [xs[k] if k == d else v.shape[k] for k in range(nd)])
                shape_lo = list(full.shape)
                shape_lo[d] = lo
                shape_hi = list(full.shape)
                shape_hi[d] = hi
                v = np.concatenate([np.full(shape_lo, -1, dtype=np.int64), full, np.full(shape_hi, -1, dtype=np.int64)], d)
        return v


def trace_channels(model: nn.Module, example: torch.Tensor) -> ChannelTrace:
    return Tracer(model, example).run()
