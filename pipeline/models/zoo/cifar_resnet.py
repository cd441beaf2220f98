"""CIFAR ResNets: option-A ResNet-20/32/44/56 (He et al. 2016; keys of akamaster/pytorch_resnet_cifar10)
and ResNet-18 with 1x1-conv shortcuts."""

import torch.nn as nn
import torch.nn.functional as F


class PadShortcut(nn.Module):
    """Option A: subsample and zero-pad the channel axis. No weights, so its channels cannot be pruned."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Option "A": zero-padded identity shortcut; option "B": 1x1 conv + BN shortcut."""

    def __init__(self, cin, planes, stride=1, option="A"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = PadShortcut(planes // 4) if option == "A" else nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetA(nn.Module):
    # The pruning literature prunes only block-internal channels of option-A nets (shortcuts have no weights).
    otcompress_prune_scope = "internal"

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, planes, stride if j == 0 else 1, "A"))
                cin = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


def cifar_resnet20(num_classes=10):
    return CifarResNetA(3, num_classes)


def cifar_resnet32(num_classes=10):
    return CifarResNetA(5, num_classes)


def cifar_resnet44(num_classes=10):
    return CifarResNetA(7, num_classes)


def cifar_resnet56(num_classes=10):
    return CifarResNetA(9, num_classes)


class CifarResNet18(nn.Module):
    def __init__(self, width: int = 64, num_classes: int = 10):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        cin = w
        for i, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)], start=1):
            planes = w * mult
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, planes, stride, "B"), BasicBlock(planes, planes, 1, "B")))
            cin = planes
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def cifar_resnet18(width=64, num_classes=10):
    return CifarResNet18(width, num_classes)
