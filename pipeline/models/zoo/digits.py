"""The quickstart's small residual CNN for scikit-learn's 8x8 digits (weights ship in recipes/data)."""

import torch.nn as nn
import torch.nn.functional as F


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(1, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)  # residual branch
        self.bn3 = nn.BatchNorm2d(2 * w)
        self.conv4 = nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(4 * w)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(x + self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def digits_cnn(width=16, num_classes=10):
    return DigitsCNN(width, num_classes)
