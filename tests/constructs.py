"""Small nets, one per construct the channel stages must handle, importable as `tests.constructs:NAME` (so
compressed.safetensors can rebuild them). `duplicate(net)` makes every shrinkable group of channels hold
exact copies (channel i + n/2 copies channel i within each chunk), so that fusing them must be exact."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Grouped(nn.Module):
    """ResNeXt-style: 1x1 -> grouped 3x3 (4 groups) -> 1x1, with BN."""

    def __init__(self, act="relu"):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(self.conv3(x).mean((2, 3)))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.gn = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.conv2(F.relu(self.gn(self.conv1(x)))).mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(12, 4, 1), nn.Conv2d(4, 12, 1)
        self.out = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.silu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.fc(self.out(x * s).mean((2, 3)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 12, 3, padding=1)
        self.c = nn.Conv2d(20, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.c(torch.cat([F.hardswish(self.a(x)), F.gelu(self.b(x))], 1)).mean((2, 3)))


class SplitShuffle(nn.Module):
    """ShuffleNet-V2-style: chunk, a branch, concat, channel shuffle. Only the branch's inner channels may
    shrink: the chunk and the shuffle fix the others."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(8, 12, 1), nn.Conv2d(12, 8, 1)
        self.head = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x1, x2 = x.chunk(2, dim=1)
        x = torch.cat([x1, self.b2(F.relu(self.b1(x2)))], 1)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(self.head(x).mean((2, 3)))


class ChannelsLast(nn.Module):
    """ConvNeXt-style block: depthwise conv, permute, LayerNorm over channels, MLP of linears, layer scale,
    residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 2, stride=2)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.norm = nn.LayerNorm(12)
        self.pw1, self.pw2 = nn.Linear(12, 24), nn.Linear(24, 12)
        self.gamma = nn.Parameter(torch.full((12,), 0.5))
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        return self.fc((x + y.permute(0, 3, 1, 2)).mean((2, 3)))


class Projection(nn.Module):
    """A residual block whose shortcut is a 1x1 conv: two producers share the block's output channels."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 10, 3, padding=1), nn.Conv2d(10, 12, 3, padding=1)
        self.short = nn.Conv2d(3, 12, 1)
        self.act = nn.PReLU(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(self.act(self.conv2(F.relu(self.conv1(x))) + self.short(x)).mean((2, 3)))


class SizeFromInput(nn.Module):
    """timm's lambda layer in small: the output is reshaped to a size read from the *input's* shape, which the
    exported graph shows as a constant."""

    def __init__(self):
        super().__init__()
        self.stem, self.v = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        b, c, h, w = x.shape
        y = self.v(x).flatten(2).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(F.relu(self.head(y)).mean((2, 3)))


def size_from_input():
    return SizeFromInput()


def grouped():
    return Grouped()


def groupnorm():
    return GroupNormNet()


def squeeze_excite():
    return SqueezeExcite()


def concat():
    return Concat()


def split_shuffle():
    return SplitShuffle()


def channels_last():
    return ChannelsLast()


def projection():
    return Projection()


ALL = ["grouped", "groupnorm", "squeeze_excite", "concat", "split_shuffle", "channels_last", "projection"]


@torch.no_grad()
def duplicate(model: nn.Module, example: torch.Tensor) -> None:
    """Make the channels of every shrinkable group exact copies in pairs within each chunk (channel i + k/2
    copies channel i): producers' rows, per-channel parameters and consumers' columns alike."""
    from otcompress.channels.groups import GroupGraph
    from otcompress.channels.importance import channel_values, write_values

    for g in GroupGraph(model, example).groups():
        for members in g.chunk_members():
            half = len(members) // 2
            src, dst = members[:half], members[half:2 * half]
            for s in g.slices:
                for name in () if s.constraint else s.tensors:
                    t = getattr(s.module, name, None)
                    if t is not None:
                        write_values(s, t.data, s.index[dst].flatten(), channel_values(s, t.data)[src])
