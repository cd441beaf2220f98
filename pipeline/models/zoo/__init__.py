"""Built-in models: the CIFAR networks of ../shared/data, ImageNet-shaped ResNets with torchvision keys, a
timm-keyed ViT and the quickstart's digits CNN. Each is one registry entry; recipes name them bare."""

from __future__ import annotations

from ...registry import Registry
from .cifar_resnet import cifar_resnet18, cifar_resnet20, cifar_resnet32, cifar_resnet44, cifar_resnet56
from .digits import digits_cnn
from .mobilenetv2 import cifar_mobilenetv2
from .resnet import resnet18, resnet50
from .vgg import cifar_vgg11_bn
from .vit import vit

ZOO = Registry("built-in model")
for _fn in (cifar_resnet20, cifar_resnet32, cifar_resnet44, cifar_resnet56, cifar_resnet18, cifar_vgg11_bn,
            cifar_mobilenetv2, resnet18, resnet50, vit, digits_cnn):
    ZOO.register(_fn.__name__, _fn)
