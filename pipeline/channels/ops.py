"""The op handlers of the channel analysis, one OPS entry per op (keyed by the ATen op name without overload),
as Torch-Pruning keys its handlers by layer type. A handler gets the walking Tracer and the graph node and
returns the node's V (graph.py: the channel variable of every element, broadcastable to the node's shape),
recording on the way the layers' uses of channels, the couplings and the channels it must freeze.

An op without an entry is "not analysed": the channels reaching it are frozen with that reason. A plugin adds
a handler with `@handles("my_op")` (see the README's Extending)."""

from __future__ import annotations

import numpy as np
import torch

from ..registry import Registry
from .graph import FIXED, FOLLOWS, ChannelTrace, Graph, Tracer, compress, none, shape_of

OPS = Registry("channel-analysis op")


def handles(*names: str):
    """Register the decorated handler `fn(tracer, node) -> V` for each op name."""
    def add(fn):
        for n in names:
            OPS.register(n, fn)
        return fn

    return add


def _nd(v: np.ndarray, n: int) -> np.ndarray:
    return v.reshape((1,) * (n - v.ndim) + v.shape)


# ---- ops that keep every element's channel ------------------------------------------------------
UNARY = (
    "relu", "relu_", "relu6", "silu", "silu_", "gelu", "gelu_", "sigmoid", "sigmoid_", "hardswish", "hardswish_",
    "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "tanh", "tanh_", "elu", "elu_",
    "selu", "selu_", "celu", "celu_", "mish", "mish_", "softplus", "clone", "contiguous", "alias", "dropout", "dropout_",
    "feature_dropout", "alpha_dropout", "native_dropout", "_to_copy", "to", "detach", "neg", "abs", "exp", "log",
    "log1p", "expm1", "sqrt", "rsqrt", "square", "reciprocal", "erf", "clamp", "clamp_", "clamp_min", "clamp_max",
    "nan_to_num", "type_as", "lift_fresh_copy", "sign", "floor", "ceil", "round", "trunc", "frac", "logit",
    "log_sigmoid", "threshold", "threshold_", "sin", "cos", "exp2", "log2", "logical_not", "bitwise_not",
    "max_pool2d", "max_pool1d", "max_pool3d", "avg_pool2d", "avg_pool1d", "avg_pool3d", "adaptive_avg_pool2d",
    "adaptive_avg_pool1d", "adaptive_avg_pool3d", "adaptive_max_pool2d", "adaptive_max_pool1d", "max_pool2d_with_indices",
    "lp_pool2d", "upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_nearest_exact2d",
    "_upsample_bilinear2d_aa", "upsample_nearest1d", "upsample_linear1d", "upsample_nearest3d", "upsample_trilinear3d",
    "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d", "fill_", "zero_",
    "pow_", "bernoulli", "bernoulli_", "flip", "roll",
)


@handles(*UNARY)
def passthrough(t: Tracer, node):
    tensors = node.all_input_nodes
    if not tensors:
        return none(shape_of(node))
    v = t.v(tensors[0])
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):  # max_pool2d_with_indices, adaptive_max_pool2d
        return [v, v]
    return v


@handles("softmax", "_softmax", "log_softmax", "_log_softmax")
def softmax(t: Tracer, node):
    """Softmax over a channel axis normalises across the channels: removing one changes the others' values,
    as pruning any consumer does, but not the code; along other axes it keeps channels like any unary op."""
    return passthrough(t, node)


SHAPE_FREE = ("_assert_tensor_metadata", "sym_size", "sym_numel", "sym_stride", "_assert_scalar", "item",
              "_local_scalar_dense", "sym_constrain_range_for_size", "_assert_async")


@handles(*SHAPE_FREE)
def shape_free(t: Tracer, node):
    return None


@handles("zeros", "ones", "full", "empty", "arange", "scalar_tensor", "zeros_like", "ones_like", "full_like",
         "empty_like", "rand_like", "randn_like", "new_zeros", "new_ones", "new_full", "new_empty", "rand", "randn",
         "linspace", "eye", "meshgrid")
def created(t: Tracer, node):
    """A new tensor: no channels of its own (a `*_like` one's extent follows its input's channels)."""
    follows = any((t.v(a) >= 0).any() or (t.v(a) == FOLLOWS).any() for a in node.all_input_nodes)
    mark = FOLLOWS if follows else FIXED
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return [none(x.shape, mark) for x in val]
    return none(shape_of(node), mark)


@handles("getitem")
def getitem(t: Tracer, node):
    src = t.V.get(node.args[0])
    return src[node.args[1]] if isinstance(src, list) else t.unknown(node)


# ---- layers ---------------------------------------------------------------------------------------
def _conv_groups(node) -> int:
    if t_op(node) == "convolution":
        return node.args[8]
    if t_op(node).startswith("conv_transpose"):
        return node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    return node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)


def t_op(node) -> str:
    return Graph.op(node)


@handles("conv2d", "conv1d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv(t: Tracer, node):
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else None
    op = t_op(node)
    transposed = op.startswith("conv_transpose") or (op == "convolution" and node.args[6])
    groups = _conv_groups(node)
    own, bown = t.g.weight_owner(w), t.g.owner(b)
    where = t.g.where(node)
    if own is None:
        return t.unknown(node, f"convolution with a computed weight in {where}")
    mod = own[0]
    xs, ws = shape_of(x), shape_of(w)
    cin = xs[1]
    cout = ws[1] * groups if transposed else ws[0]
    tensors = (own[1],) + ((bown[1],) if bown is not None and bown[0] == mod else ())
    vin = t.along(t.v(x), xs, 1, mod)
    functional = not isinstance(t.g.model.get_submodule(mod), torch.nn.modules.conv._ConvNd)
    if groups > 1 and functional:  # F.conv2d(x, self.filt, groups=self.channels): the group count must follow
        hits = t.stored_attr(node, groups)
        if len(hits) != 1:
            t.freeze_all([vin], f"convolution with {groups} groups in {where}: the group count is not one attribute "
                                "of the module that could be rewritten")
        elif groups == cin == cout:
            t.use(hits[0][0], "attr", (hits[0][1],), hits[0][2], vin)
    if transposed:
        if groups > 1:
            return t.unknown(node, f"grouped transposed convolution in {where}")
        t.use(mod, "in", (own[1],), 0, vin)
        vout = t.produce(mod, cout)
        t.use(mod, "out", (own[1],), 1, vout)
        if len(tensors) > 1:
            t.use(mod, "out", tensors[1:], 0, vout)
        return vout.reshape((1, cout) + (1,) * (len(xs) - 2))
    if groups > 1 and groups == cin == cout:  # depthwise: its rows are its input channels
        t.use(mod, "channel", tensors, 0, vin)
        return vin.reshape((1, cout) + (1,) * (len(xs) - 2))
    t.use(mod, "gin" if groups > 1 else "in", (own[1],), 1, vin, groups)
    vout = t.produce(mod, cout)
    t.use(mod, "out", tensors, 0, vout, groups)
    return vout.reshape((1, cout) + (1,) * (len(xs) - 2))


@handles("linear")
def linear(t: Tracer, node):
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else None
    own, bown = t.g.owner(w), t.g.owner(b)
    if own is None:
        return t.unknown(node, f"linear with a computed weight in {t.g.where(node)}")
    mod = own[0]
    xs = shape_of(x)
    vin = t.along(t.v(x), xs, -1, mod)
    t.use(mod, "in", (own[1],), 1, vin)
    cout = shape_of(w)[0]
    vout = t.produce(mod, cout)
    t.use(mod, "out", (own[1],) + ((bown[1],) if bown is not None and bown[0] == mod else ()), 0, vout)
    return vout.reshape((1,) * (len(xs) - 1) + (cout,))


@handles("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "instance_norm",
         "native_batch_norm", "_native_batch_norm_legit_functional")
def batch_norm(t: Tracer, node):
    x = node.args[0]
    owners = [t.g.owner(p) for p in node.args[1:5]]
    mods = {o[0] for o in owners if o}
    v = t.v(x)
    if mods:
        mod = mods.pop()
        t.use(mod, "channel", tuple(o[1] for o in owners if o), 0, t.along(v, shape_of(x), 1, mod))
    val = node.meta.get("val")
    return [v] + [none(getattr(o, "shape", ())) for o in val[1:]] if isinstance(val, (list, tuple)) else v


@handles("layer_norm", "native_layer_norm")
def layer_norm(t: Tracer, node):
    x, shape = node.args[0], node.args[1]
    w = node.args[2] if len(node.args) > 2 else None
    b = node.args[3] if len(node.args) > 3 else None
    v = t.v(x)
    xs = shape_of(x)
    own = [o for o in (t.g.owner(w), t.g.owner(b)) if o]
    mod = own[0][0] if own else t.g.module_name(node)
    if len(shape) == 1:
        vin = t.along(v, xs, -1, mod)
        if own or isinstance(t.g.model.get_submodule(mod) if mod else None, torch.nn.LayerNorm):
            t.use(mod, "channel", tuple(o[1] for o in own), 0, vin)  # no parameters: its size attribute follows
        elif (vin >= 0).any() and len(hits := t.stored_attr(node, shape[0])) == 1:
            t.use(hits[0][0], "attr", (hits[0][1],), hits[0][2], vin)
    else:  # a norm over several axes: its normalized_shape fixes them
        t.freeze_all([v], f"layer norm over {len(shape)} axes in {mod or 'the model'}")
    val = node.meta.get("val")
    return [v] + [none(o.shape) for o in val[1:]] if isinstance(val, (list, tuple)) else v


@handles("group_norm", "native_group_norm")
def group_norm(t: Tracer, node):
    x = node.args[0]
    if t_op(node) == "native_group_norm":
        w, b, groups = node.args[1], node.args[2], node.args[6]
    else:
        groups = node.args[1]
        w = node.args[2] if len(node.args) > 2 else None
        b = node.args[3] if len(node.args) > 3 else None
    v = t.v(x)
    own = [o for o in (t.g.owner(w), t.g.owner(b)) if o]
    vin = t.along(v, shape_of(x), 1, t.g.where(node))
    mod = t.g.module_name(node)
    if own:
        t.use(own[0][0], "channel", tuple(o[1] for o in own), 0, vin, groups)
    elif isinstance(t.g.model.get_submodule(mod) if mod else None, torch.nn.GroupNorm):
        t.use(mod, "channel", (), 0, vin, groups)
    elif groups > 1:
        t.use(t.g.module_name(node), "split", (), 0, vin, groups)
    val = node.meta.get("val")
    return [v] + [none(o.shape) for o in val[1:]] if isinstance(val, (list, tuple)) else v


@handles("prelu", "_prelu_kernel")
def prelu(t: Tracer, node):
    x, w = node.args[0], node.args[1]
    v = t.v(x)
    own = t.g.owner(w)
    if own and shape_of(w) and shape_of(w)[0] > 1:
        t.use(own[0], "channel", (own[1],), 0, t.along(v, shape_of(x), 1, own[0]))
    return v


# ---- elementwise and reductions -----------------------------------------------------------------
BINARY = ("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "maximum", "minimum", "pow", "where",
          "addcmul", "addcdiv", "lerp", "fmod", "remainder", "eq", "ne", "gt", "ge", "lt", "le", "logical_and",
          "logical_or", "copy_", "copy", "floor_divide", "atan2", "hypot", "masked_fill", "masked_fill_", "xlogy",
          "bitwise_and", "bitwise_or", "true_divide")


@handles(*BINARY)
def elementwise(t: Tracer, node):
    tensors = [a for a in node.all_input_nodes]
    if len(tensors) <= 1:
        return passthrough(t, node)
    out_shape = shape_of(node)
    nd = len(out_shape)
    shapes = [(1,) * (nd - len(shape_of(a))) + tuple(shape_of(a)) for a in tensors]
    vs = [_nd(t.v(a), nd) for a in tensors]
    common = np.broadcast_shapes(*[v.shape for v in vs])
    full = [np.broadcast_to(v, common) for v in vs]
    for i, a in enumerate(full):
        for j, b in enumerate(full):
            if i < j:
                t.uf.union_pairs(a.ravel(), b.ravel())
            if i == j:
                continue
            # a's channel axes must shrink in b too: where b is fixed-size there (no variable, not following), freeze
            a_dims = [d for d in range(nd) if vs[i].shape[d] > 1]
            if any(shapes[j][d] > 1 for d in a_dims):
                t.uf.freeze(a[(a >= 0) & (b == FIXED)], f"{t_op(node)} with a fixed-size tensor in {t.g.where(node)}")
    out = full[0].copy()
    for f in full[1:]:
        out = np.where(out >= 0, out, f)
    return compress(out)


@handles("max", "min")
def max_min(t: Tracer, node):
    if len(node.all_input_nodes) == 2:
        return elementwise(t, node)
    return reduce(t, node)


REDUCE = ("mean", "sum", "amax", "amin", "var", "std", "var_mean", "std_mean", "logsumexp", "prod", "norm",
          "linalg_vector_norm", "argmax", "argmin", "any", "all", "count_nonzero", "nansum", "nanmean", "aminmax")


@handles(*REDUCE)
def reduce(t: Tracer, node):
    """A statistic over axes: channels reduced over are used without their count being fixed (a hand-written
    norm); a full reduction is a scalar statistic."""
    x = node.args[0]
    xs = shape_of(x)
    nd = len(xs)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if t_op(node) in ("norm", "linalg_vector_norm"):  # (x, p, dim, keepdim)
        dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    if isinstance(dims, (int, list, tuple)) and not isinstance(dims, bool):
        dims = [dims] if isinstance(dims, int) else list(dims)
    else:
        dims = list(range(nd))
    if "keepdim" in node.kwargs:
        keep = node.kwargs["keepdim"]
    elif t_op(node) in ("var", "std", "var_mean", "std_mean"):  # (x, dim, unbiased, keepdim)
        keep = len(node.args) > 3 and bool(node.args[3])
    else:
        keep = len(node.args) > 2 and isinstance(node.args[2], bool) and node.args[2]
    v = _nd(t.v(x), nd)
    dims = [d % nd for d in dims] if nd else []
    for d in dims:
        if v.shape[d] > 1:  # a statistic over channels: its extent follows them when broadcast back
            v = np.full([1 if k == d else s for k, s in enumerate(v.shape)], FOLLOWS, dtype=np.int64)
    if not keep:
        v = v.reshape([s for d, s in enumerate(v.shape) if d not in dims])
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return [v for _ in val]
    return v


# ---- shape ops ------------------------------------------------------------------------------------
def _stored_size(t: Tracer, node, out: np.ndarray, sizes: list) -> None:
    """The innermost channel axis of a view's target is the one whose size shrinks (outer axes of a split count
    chunks): where exactly one attribute of the module stores that size, record it for rewriting."""
    dims = [d for d in range(out.ndim) if out.shape[d] > 1]
    if not dims:
        return
    d = dims[-1]
    s = sizes[d] if d < len(sizes) else None
    if not isinstance(s, int) or s <= 1:
        return
    vars_ = np.moveaxis(out, d, 0).reshape(out.shape[d], -1)[:, 0]  # one chunk's channels along the axis
    if (vars_ < 0).any() or len(np.unique(vars_)) != len(vars_):
        return
    hits = t.stored_attr(node, s)
    if len(hits) == 1:
        mod, attr, pos = hits[0]
        t.use(mod, "attr", (attr,), pos, vars_)


@handles("view", "reshape", "_unsafe_view", "flatten", "unflatten", "view_copy")
def reshape(t: Tracer, node):
    """Element by element, V follows the reshape exactly: flatten spreads a channel over features, a grouped
    view (B, G, C/G, ...) splits the channel axis into G chunks that must keep equal counts (GroupNorm written
    by hand, EvoNorm, channel shuffle). Sizes are taken to follow the input (computed from x.shape), except
    those an attribute of the module stores (rewritten when the channels shrink)."""
    x = node.args[0]
    v, xs, ys = t.v(x), shape_of(x), shape_of(node)
    v = _nd(v, len(xs))
    if not (v >= 0).any():
        return none(ys, FOLLOWS if (v == FOLLOWS).any() else FIXED)
    full = np.broadcast_to(v, xs)
    out = compress(full.reshape(ys))
    in_dims = [d for d in range(len(xs)) if v.shape[d] > 1]
    out_dims = [d for d in range(len(ys)) if out.shape[d] > 1]
    split = [d for d in out_dims if not _one_var_per_index(out, d) and len(out_dims) > 1]
    if len(out_dims) > len(in_dims) and split:
        # the channel axis split into several axes: each outer axis fixes its count of equal chunks
        chan = in_dims[0] if len(in_dims) == 1 else None
        if chan is not None:
            order = t.along(v, xs, chan, f"reshape in {t.g.where(node)}")
            for d in split:
                blocks = int(np.prod([ys[k] for k in out_dims if k <= d]))
                if 1 < blocks < len(order) and len(order) % blocks == 0:
                    t.use(t.g.module_name(node), "split", (), 0, order, blocks)
    if t_op(node) in ("view", "reshape", "_unsafe_view", "view_copy"):
        _stored_size(t, node, out, list(node.args[1]))
    return out


def _one_var_per_index(v: np.ndarray, d: int) -> bool:
    """Each index along axis d holds a single variable (d is a channel axis), rather than many (a chunk axis)."""
    moved = np.moveaxis(v, d, 0).reshape(v.shape[d], -1)
    return bool((moved == moved[:, :1]).all())


@handles("permute", "transpose", "t", "squeeze", "unsqueeze", "expand", "expand_as", "movedim", "swapaxes",
         "numpy_T", "permute_copy", "expand_copy", "squeeze_copy", "unsqueeze_copy")
def move(t: Tracer, node):
    op, x = t_op(node), node.args[0]
    v, xs, ys = t.v(x), shape_of(x), shape_of(node)
    v = _nd(v, len(xs))
    if op in ("permute", "permute_copy"):
        return v.transpose(node.args[1])
    if op in ("transpose", "swapaxes"):
        return np.swapaxes(v, node.args[1], node.args[2])
    if op == "movedim":
        return np.moveaxis(v, node.args[1], node.args[2])
    if op in ("t", "numpy_T"):
        return v.T
    if op in ("expand", "expand_as", "expand_copy"):
        return _nd(v, len(ys))
    if op in ("squeeze", "squeeze_copy"):
        dims = node.args[1] if len(node.args) > 1 else [d for d in range(len(xs)) if xs[d] == 1]
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % len(xs) for d in dims if xs[d % len(xs)] == 1]
        return v.reshape([s for d, s in enumerate(v.shape) if d not in dims])
    return np.expand_dims(v, node.args[1] % (len(xs) + 1))


@handles("repeat", "tile")
def repeat(t: Tracer, node):
    x = node.args[0]
    v, ys = t.v(x), shape_of(node)
    reps = list(node.args[1])
    v = _nd(v, len(reps))
    if any(r > 1 and v.shape[d] > 1 for d, r in enumerate(reps)):
        t.freeze_all([v], f"{t_op(node)} of channels in {t.g.where(node)}")
        return none(ys)
    return v


@handles("select")
def select(t: Tracer, node):
    x, dim, idx = node.args[0], node.args[1], node.args[2]
    v, xs = t.v(x), shape_of(x)
    v = _nd(v, len(xs))
    dim %= len(xs)
    if v.shape[dim] > 1:
        if _one_var_per_index(v, dim):
            t.freeze_all([v], f"a fixed channel index selected in {t.g.where(node)}")
        v = v.take([idx % xs[dim]], axis=dim)
    return v.reshape([s for d, s in enumerate(v.shape) if d != dim])


@handles("slice", "narrow", "slice_copy")
def slice_(t: Tracer, node):
    x = node.args[0]
    v, xs = t.v(x), shape_of(x)
    v = _nd(v, len(xs))
    if t_op(node) == "narrow":
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
    vars_ = t.along(v, xs, dim, "slice")
    where = t.g.where(node)
    if step != 1:
        t.uf.freeze(vars_, f"strided slice of channels in {where}")
    elif end < n:
        t.uf.freeze(vars_[:end], f"slice [{start}:{end}] of {n} channels in {where} (fixed bounds)")
    else:
        t.uf.freeze(vars_[:start], f"slice [{start}:] of {n} channels in {where} (fixed start)")
    return np.take(v, range(start, end, step), axis=dim)


@handles("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split", "split_copy")
def split(t: Tracer, node):
    """chunk(k) and equal splits whose size an attribute stores keep equal counts per piece (chunks), as C2f's
    `cv1(x).chunk(2, 1)`; pieces of fixed sizes written in the code freeze the channels."""
    op, x = t_op(node), node.args[0]
    v, xs = t.v(x), shape_of(x)
    v = _nd(v, len(xs))
    outs = node.meta["val"]
    if op == "chunk":
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    elif op == "unbind":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    else:
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim %= len(xs)
    sizes = [o.shape[dim] if op != "unbind" else 1 for o in outs]
    bounds = np.cumsum([0] + sizes)
    pieces = [np.take(v, range(bounds[i], bounds[i + 1]), axis=dim) for i in range(len(outs))] \
        if v.shape[dim] > 1 else [v] * len(outs)
    if v.shape[dim] > 1 and _one_var_per_index(v, dim):  # splitting channels (not a chunk axis of a grouped view)
        vars_ = t.along(v, xs, dim, "split")
        where = t.g.where(node)
        equal = len(set(sizes)) == 1 and len(sizes) > 1
        if op == "chunk" and equal:
            t.use(t.g.module_name(node), "split", (), 0, vars_, len(sizes))
        elif op in ("split", "unsafe_split", "split_with_sizes") and equal \
                and len(hits := t.stored_attr(node, sizes[0])) == 1:
            t.use(t.g.module_name(node), "split", (), 0, vars_, len(sizes))
            t.use(hits[0][0], "attr", (hits[0][1],), hits[0][2], vars_[:sizes[0]])
        elif op in ("split", "unsafe_split") and isinstance(node.args[1], int) and len(sizes) > 1:
            t.uf.freeze(vars_[:sum(sizes[:-1])], f"split of {xs[dim]} channels into pieces of {node.args[1]} in "
                                                 f"{where} (fixed sizes; the last piece takes the rest)")
        else:
            t.uf.freeze(vars_, f"{op} of {xs[dim]} channels into {sizes} in {where} (pieces must keep their sizes)")
    if op == "unbind":
        pieces = [p.reshape([s for d, s in enumerate(p.shape) if d != dim]) for p in pieces]
    return pieces


@handles("cat", "concat", "concatenate", "stack")
def cat(t: Tracer, node):
    stack = t_op(node) == "stack"
    xs_nodes = list(node.args[0])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    ys = shape_of(node)
    nd = len(ys)
    vs, shapes = [], []
    for a in xs_nodes:
        s = list(shape_of(a))
        v = t.v(a)
        if stack:
            s.insert(dim % nd, 1)
            v = np.expand_dims(_nd(v, len(s) - 1), dim % nd)
        vs.append(_nd(v, nd))
        shapes.append(s)
    dim %= nd
    # channels of the pieces meet position by position along the other axes: couple them
    profiles = [compress(np.moveaxis(v, dim, 0).reshape(v.shape[dim], -1)[:1]) if v.shape[dim] == 1 else None for v in vs]
    full = [p for p in profiles if p is not None]
    for a, b in zip(full, full[1:]):
        c = np.broadcast_shapes(a.shape, b.shape)
        t.uf.union_pairs(np.broadcast_to(a, c).ravel(), np.broadcast_to(b, c).ravel())
    other = [max(v.shape[d] for v in vs) if d != dim else None for d in range(nd)]
    parts = [np.broadcast_to(v, [s[dim] if d == dim else other[d] for d in range(nd)]) for v, s in zip(vs, shapes)]
    return compress(np.concatenate(parts, axis=dim))


@handles("pad", "constant_pad_nd")
def pad(t: Tracer, node):
    x, pads = node.args[0], node.args[1]
    v, xs = t.v(x), shape_of(x)
    nd = len(xs)
    v = _nd(v, nd)
    for i in range(len(pads) // 2):
        d = nd - 1 - i
        lo, hi = pads[2 * i], pads[2 * i + 1]
        if (lo or hi) and v.shape[d] > 1:
            if lo < 0 or hi < 0:
                t.uf.freeze(v, f"cropping pad on channels in {t.g.where(node)}")
                return none(xs)
            full = np.broadcast_to(v, [xs[k] if k == d else v.shape[k] for k in range(nd)])
            shape_lo, shape_hi = list(full.shape), list(full.shape)
            shape_lo[d], shape_hi[d] = lo, hi
            v = np.concatenate([np.full(shape_lo, -1, dtype=np.int64), full, np.full(shape_hi, -1, dtype=np.int64)], d)
    return v


@handles("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
         "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention")
def attention(t: Tracer, node):
    """softmax(q k^T) v: q's and k's channels meet in the dot product (coupled), the output carries v's."""
    q, k, v = node.args[:3]
    nd = len(shape_of(q))
    vq, vk = _nd(t.v(q), nd), _nd(t.v(k), nd)
    last = [vq.take([0], axis=-2) if vq.shape[-2] > 1 else vq, vk.take([0], axis=-2) if vk.shape[-2] > 1 else vk]
    c = np.broadcast_shapes(last[0].shape, last[1].shape)
    t.uf.union_pairs(np.broadcast_to(last[0], c).ravel(), np.broadcast_to(last[1], c).ravel())
    out = _nd(t.v(v), nd)
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        return [out] + [none(o.shape) if isinstance(o, torch.Tensor) else None for o in val[1:]]
    return out


def trace_channels(model: torch.nn.Module, example: torch.Tensor) -> ChannelTrace:
    """The coupling of every channel in `model` at `example`'s shape (graph.py), with the handlers above.

    Raises:
        OTCError: torch.export cannot trace the model.
        InternalError: an op handler failed (names the op and the layer).
    """
    from ..outputs import names

    try:
        out_names = names(model, example)
    except TypeError:
        out_names = None
    return Tracer(model, example, out_names).run(OPS)
