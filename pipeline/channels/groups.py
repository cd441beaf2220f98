"""Channel groups: channels that must shrink together, from the coupling found by trace.py.

A group is every channel class created by one set of coupled producers (a conv, or several joined by
residual adds), listed in the order of its first producer's outputs. Each layer's share of a group is a
Slice: `index[c]` lists the positions (rows, columns, norm entries) of group channel c, so the math in
importance.py and fusion.py never sees the graph. A group may carry constraints: `forced` channels must
be kept (frozen by the trace, e.g. positions a fixed slice reads), and `chunks` splits the channels into
equal parts that must keep equal counts and never mix (grouped convolutions, GroupNorm).

Removal is done here too: every tensor loses the positions of the dropped channels of all groups in one
pass, and layer attributes (out_channels, num_features, normalized_shape, groups ...) follow through the
RESIZE registry."""

from __future__ import annotations

import copy

import fnmatch
import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..registry import TypeRegistry
from .graph import Use
from .ops import trace_channels
from .unionfind import UnionFind

CONV = nn.modules.conv._ConvNd
NORM = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass
class Slice:
    """One layer's share of a group. `index[c]` lists the positions of group channel c along `dim` of the
    layer's `tensors` (for role "gin", input-channel positions of a grouped conv)."""

    name: str
    module: nn.Module
    role: str  # "out" producer rows, "in"/"gin" consumer columns, "channel" per-channel entries, "param", and the
    # constraints "split" (equal chunks, no tensors) and "attr" (a module attribute counting the channels)
    index: torch.Tensor  # (n, r) long
    tensors: tuple[str, ...] = ("weight",)
    dim: int = 0
    groups: int = 1
    width: int = 0  # positions of the use's axis (all groups' channels): what an "attr" counts

    @property
    def constraint(self) -> bool:
        """A rule on the counts ("split", "attr"), not values: no weights to score, fuse or write."""
        return self.role in ("split", "attr")


@dataclass
class Group:
    root: str
    n: int
    slices: list[Slice]
    stage: int = 0
    fusable: bool = True
    note: str = ""
    internal: bool = True
    layers: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)  # layers whose outputs are the group's channels
    forced: torch.Tensor | None = None  # (n,) bool: channels that must be kept
    chunks: torch.Tensor | None = None  # (n,) long chunk id; equal counts per chunk
    n_chunks: int = 1
    placement: bool = False  # kept channels must move to the first positions of each chunk (grouped consumers)

    def matches(self, pattern: str) -> bool:
        return any(fnmatch.fnmatch(n, pattern) for n in [self.root, *self.producers])

    def chunk_members(self) -> list[torch.Tensor]:
        ch = self.chunks if self.chunks is not None else torch.zeros(self.n, dtype=torch.long)
        return [torch.nonzero(ch == c).flatten() for c in range(self.n_chunks)]


@dataclass
class Frozen:
    """A group left whole, and why."""

    root: str
    n: int
    reason: str
    layers: list[str]


def is_depthwise(m) -> bool:
    return isinstance(m, CONV) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def stage_of(name: str) -> int | None:
    m = re.match(r"(?:.*\.)?layer(\d+)(\.|$)", name)
    return int(m.group(1)) if m else None


# ---- layer attributes that follow the tensors ---------------------------------------------------
RESIZE = TypeRegistry("layer resize rule")  # layer class -> fn(module, role, new_size); most specific class wins


@RESIZE.register(CONV)
def _conv(m, role, n):
    if role == "channel":  # depthwise
        m.in_channels = m.out_channels = m.groups = n
    elif role == "out":
        m.out_channels = n
    else:
        m.in_channels = n


@RESIZE.register(nn.Linear)
def _linear(m, role, n):
    if role == "out":
        m.out_features = n
    else:
        m.in_features = n


@RESIZE.register((nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm))
def _bn(m, role, n):
    m.num_features = n


@RESIZE.register(nn.LayerNorm)
def _ln(m, role, n):
    m.normalized_shape = (*tuple(m.normalized_shape)[:-1], n)


@RESIZE.register(nn.GroupNorm)
def _gn(m, role, n):
    m.num_channels = n


@RESIZE.register(nn.PReLU)
def _prelu(m, role, n):
    m.num_parameters = n


def resize(m: nn.Module, role: str, n: int) -> None:
    """Set the size attributes of layer m after its `role` tensors shrank to n channels."""
    fn = RESIZE.lookup(m)
    if fn is not None:
        fn(m, role, n)


def protected(model: nn.Module) -> dict[str, str]:
    """Producer layers whose outputs mean something fixed (a detection head's boxes, classes, anchors,
    distribution bins or mask coefficients), as {layer name pattern: reason}: a model family's adapter says so
    by a `protected_channels()` method."""
    fn = getattr(model, "protected_channels", None)
    return dict(fn()) if callable(fn) else {}


class GroupGraph:
    """The model's channel groups. `groups()` are those that can shrink (within `scope`), `frozen` those left
    whole with the reason; `apply` removes the channels a plan drops from every layer at once."""

    def __init__(self, model: nn.Module, example: torch.Tensor, exclude=(), scope: str | None = None):
        self.model = model
        self.scope = scope or getattr(model, "otcompress_prune_scope", "all")
        self.mods = dict(model.named_modules())
        trace = trace_channels(model, example)
        self.trace = trace
        uf = trace.uf
        uses = self._param_uses(trace)
        fixed = protected(model)
        for u in uses:
            if u.role == "out":
                if any(fnmatch.fnmatch(u.module, p) for p in exclude):
                    uf.freeze(u.vars, f"excluded by the stage's exclude patterns ({u.module})")
                why = next((r for p, r in fixed.items() if fnmatch.fnmatch(u.module, p)), None)
                if why:  # the family's reason says more than "model output": it replaces the trace's
                    for i in u.vars[u.vars >= 0]:
                        uf.frozen[int(i)] = f"{u.module}: {why}"

        def classes(vars_):
            return np.array([uf.find(int(i)) if i >= 0 else -1 for i in vars_], dtype=np.int64)

        for u in uses:
            u.classes = classes(u.vars)
        gu = UnionFind()
        producers = [u for u in uses if u.role == "out"]
        for u in producers:
            cs = u.classes[u.classes >= 0]
            for c in cs[1:]:
                gu.union(int(cs[0]), int(c))
        for u in uses:  # equal chunks of one group's channels only: across groups nothing keeps their counts equal
            if u.role == "split":
                spans = {gu.find(int(c)) for c in u.classes if c >= 0}
                if len(spans) > 1:
                    uf.freeze(u.vars, f"{u.module or 'the model'} splits the channels of {len(spans)} groups into "
                                      f"{u.groups} equal parts (channel shuffle?)")
        frozen = uf.frozen_roots()
        members: dict[int, list[Use]] = defaultdict(list)
        for u in producers:
            if (u.classes >= 0).any():
                members[gu.find(int(u.classes[u.classes >= 0][0]))].append(u)
        self._groups, self.frozen = [], []
        by_group: dict[int, list[Use]] = defaultdict(list)
        for u in uses:
            for g in {gu.find(int(c)) for c in u.classes if c >= 0 and gu.find(int(c)) in members}:
                by_group[g].append(u)
        for gid, prods in sorted(members.items(), key=lambda kv: min(u.order for u in kv[1])):
            self._build(gid, prods, by_group[gid], frozen, gu)
        self._trial(example)

    # ---------------------------------------------------------------------------------------------
    def _trial(self, example: torch.Tensor) -> None:
        """Shrink every group by one channel per chunk on a copy and run it: code that reads a group's size from
        another tensor's shape (`B, C, H, W = x.shape` then `out.reshape(B, C, H, W)` in timm's lambda layers)
        is invisible in the exported graph, where every size is a constant. The groups whose trial breaks the
        forward (found by bisection) are left whole, with the error."""
        def breaks(groups: list[Group]) -> str | None:
            copy_ = copy.deepcopy(self.model).eval()
            plan = {}
            for g in groups:
                keep = torch.ones(g.n, dtype=torch.bool)
                for members in g.chunk_members():
                    free = [int(i) for i in members if g.forced is None or not g.forced[i]]
                    if not free:
                        break
                    keep[free[-1]] = False
                else:
                    plan[g.root] = torch.nonzero(keep).flatten()
            self.apply(plan, dict(copy_.named_modules()))  # one call: positions are the original layout's
            try:
                with torch.no_grad():
                    copy_(example)
            except Exception as e:  # the model's own code refused the shrunk sizes
                return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            return None

        tried = [g for g in self._groups if not g.placement]  # grouped-conv feeders: placement moves channels first
        if not tried or breaks(tried) is None:
            return
        culprits: dict[str, str] = {}

        def search(groups: list[Group]) -> None:
            why = breaks(groups)
            if why is None:
                return
            if len(groups) == 1:
                culprits[groups[0].root] = why
                return
            half = len(groups) // 2
            before = len(culprits)
            search(groups[:half])
            search(groups[half:])
            if len(culprits) == before:  # only together: leave them all whole
                culprits.update({g.root: why for g in groups})

        search(tried)
        for g in [g for g in self._groups if g.root in culprits]:
            self._groups.remove(g)
            self.frozen.append(Frozen(g.root, g.n, "the model's code reads its size elsewhere (not in the exported "
                                      f"graph): shrinking it breaks the forward ({culprits[g.root]})", g.layers))

    # ---------------------------------------------------------------------------------------------
    def _param_uses(self, trace) -> list[Use]:
        """Parameters used elementwise (layer scale, position embeddings) become uses along the one axis their
        channel classes vary along; one whose classes vary along several axes is frozen."""
        uses = list(trace.uses)
        uf = trace.uf
        for (module, attr), v in trace.params.items():
            cls = np.vectorize(uf.find, otypes=[np.int64])(v) if v.size else v
            dims = [d for d in range(v.ndim) if v.shape[d] > 1 and not (cls == cls.take([0], axis=d)).all()]
            if len(dims) == 1:
                d = dims[0]
                rep = np.moveaxis(v, d, 0).reshape(v.shape[d], -1)[:, 0]
                uses.append(Use(module, "param", (attr,), d, rep, 1, 0))
            elif len(dims) > 1:
                uf.freeze(v, f"parameter {module}.{attr} is used elementwise along several channel axes")
        return uses

    def _build(self, gid, prods, uses, frozen, gu):
        # the root is the producer that makes every channel of the group (with partial or zero-padded residuals
        # earlier producers make a subset: they lose channels only where the group loses one of theirs)
        root = min(prods, key=lambda u: (-len(set(u.classes.tolist())), u.order))
        order = [int(c) for c in root.classes]
        name = root.module
        layers = sorted({u.module for u in uses})
        pos = {c: i for i, c in enumerate(order)}
        n = len(order)

        def leave(reason):
            self.frozen.append(Frozen(name, n, reason, layers))

        if order and all(c in frozen for c in order):  # kept whole anyway: the freezing reason says why
            return leave(frozen[order[0]])
        if len(pos) != n or any(c < 0 for c in order):
            return leave("its producer's outputs are not distinct channels")
        for u in prods:
            if not set(int(c) for c in u.classes) <= pos.keys() or len(set(u.classes.tolist())) != len(u.classes):
                return leave(f"producers {root.module} and {u.module} do not share their channels")
        forced = torch.tensor([c in frozen for c in order])
        if bool(forced.all()):
            return leave(frozen[order[0]])
        slices, fusable, note = [], True, ""
        chunk_keys = [[] for _ in range(n)]
        placement = False
        for u in uses:
            m = self.mods.get(u.module)
            if m is None:
                continue
            cols = [np.nonzero(u.classes == c)[0] for c in order]
            counts = {len(c) for c in cols}
            if counts == {0}:
                continue
            if len(counts) != 1 and u.role not in ("split", "attr"):  # a layer sees only some (a slice of them)
                fusable, note = False, f"{u.module} reads only some of the group's channels"
            if len(counts) != 1:
                r = max(counts)
                cols = [np.concatenate([c, -np.ones(r - len(c), dtype=np.int64)]) for c in cols]
            index = torch.as_tensor(np.stack(cols), dtype=torch.long)
            slices.append(Slice(u.module, m, u.role, index, u.tensors, u.dim, u.groups, len(u.vars)))
            if u.groups > 1 and u.role in ("gin", "out", "channel", "split"):
                size = len(u.vars) // u.groups
                for c in range(n):
                    chunk_keys[c].append(int(index[c, 0]) // size if index[c, 0] >= 0 else -1)
                if u.role == "gin":
                    placement = True
        keys = sorted({tuple(k) for k in chunk_keys})
        chunks = torch.tensor([keys.index(tuple(k)) for k in chunk_keys])
        n_chunks = len(keys)
        sizes = torch.bincount(chunks, minlength=n_chunks)
        if n_chunks > 1 and (sizes.min() != sizes.max()):
            return leave("grouped layers split its channels into unequal chunks")
        if placement and bool(forced.any()):
            return leave("it feeds a grouped convolution and has frozen channels: " + frozen[order[int(forced.nonzero()[0])]])
        if placement:  # kept channels move to the first positions of each chunk: positions must follow channel order
            for s in slices:
                if s.role == "gin" and not bool((s.index[:, 0].diff() > 0).all()):
                    return leave(f"{s.name}: its input channels are not in the group's order")
        st = stage_of(name)
        self._groups.append(Group(
            root=name, n=n, slices=slices, stage=st if st is not None else 0, fusable=fusable, note=note,
            internal=len(prods) == 1, layers=layers, producers=[u.module for u in sorted(prods, key=lambda u: u.order)],
            forced=forced if bool(forced.any()) else None, chunks=chunks if n_chunks > 1 else None, n_chunks=n_chunks,
            placement=placement))

    # ---------------------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        out = list(self._groups)
        if self.scope == "internal":
            out = [g for g in out if g.internal]
        return out

    def apply(self, keep: dict[str, torch.Tensor], modules: dict | None = None) -> None:
        """Remove, in every layer, the positions of the channels each named group does not keep (root ->
        kept channel indices). Values must already be where they are kept (fusion and placement write them).
        `modules`: {name: module} of a copy of the model to cut instead (default: the model's own)."""
        drops: dict[tuple, set] = defaultdict(set)
        roles: dict[tuple, Slice] = {}
        for g in self._groups:
            if g.root not in keep:
                continue
            kept = torch.zeros(g.n, dtype=torch.bool)
            kept[torch.as_tensor(keep[g.root], dtype=torch.long)] = True
            for s in g.slices:
                gone = s.index[~kept].flatten()
                key = (s.name, s.role, s.dim, s.tensors)
                drops[key] |= {int(p) for p in gone if p >= 0}
                roles[key] = s
        for key, gone in drops.items():
            if gone:
                s = roles[key]
                self._remove(s, gone, modules[s.name] if modules is not None else s.module)

    def _remove(self, s: Slice, gone: set, m: nn.Module) -> None:
        if s.role == "split":  # a constraint: nothing to cut
            return
        if s.role == "attr":  # the attribute counts the channels it saw: the kept ones now
            name = s.tensors[0]
            value = getattr(m, name)
            n = s.width - len(gone)
            if s.dim < 0:
                setattr(m, name, n)
            else:
                new = list(value)
                new[s.dim] = n
                setattr(m, name, type(value)(new))
            return
        if s.role == "gin":
            w = m.weight
            per = w.shape[1]
            total = per * m.groups
            kept = [p for p in range(total) if p not in gone]
            chunk_cols = [sorted(p % per for p in kept if p // per == c) for c in range(m.groups)]
            if any(cc != chunk_cols[0] for cc in chunk_cols):
                raise RuntimeError(f"{s.name}: grouped conv inputs kept unevenly across its groups")
            with torch.no_grad():
                m.weight = nn.Parameter(w[:, chunk_cols[0]].clone(), requires_grad=w.requires_grad)
            resize(m, "in", len(kept))
            return
        size = None
        for t in s.tensors:
            cur = getattr(m, t, None)
            if cur is None:
                continue
            d = s.dim % cur.dim()
            n = cur.shape[d]
            kept = torch.tensor([p for p in range(n) if p not in gone], dtype=torch.long)
            new = cur.detach().index_select(d, kept).clone()
            if t in m._buffers:
                m._buffers[t] = new
            elif isinstance(cur, nn.Parameter):
                setattr(m, t, nn.Parameter(new, requires_grad=cur.requires_grad))
            else:
                setattr(m, t, new)
            size = len(kept)
        if size is None:  # a norm without parameters: its size attribute alone follows
            size = (getattr(m, "num_features", None) or getattr(m, "num_channels", None)
                    or tuple(getattr(m, "normalized_shape", (0,)))[-1]) - len(gone)
        if s.role != "param":
            resize(m, s.role, size)

    def describe_frozen(self) -> list[dict]:
        return [{"group": f.root, "channels": f.n, "reason": f.reason, "layers": f.layers} for f in self.frozen]
