"""CIFAR VGG-11-BN; width 64 is the standard net, 32 the shared half-width checkpoint."""

import torch.nn as nn

CFG11 = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]


class CifarVGG(nn.Module):
    def __init__(self, width: int = 64, num_classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for v in CFG11:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v * width, 3, padding=1, bias=False), nn.BatchNorm2d(v * width), nn.ReLU(inplace=True)]
                cin = v * width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def cifar_vgg11_bn(width=64, num_classes=10):
    return CifarVGG(width, num_classes)
