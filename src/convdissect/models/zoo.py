"""Small nets of other shapes than the SimpleConvNet, built through Hydra like any user's net
(model._target_=convdissect.models.zoo.SmallConvNet): plain logits, BatchNorm, a residual add, a
concatenation and a flatten of a 2x2 map into a Linear; LeNet-5's tanh and average pooling; a
depthwise-separable net with a dilated conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallConvNet(nn.Module):
    """conv -> relu -> pool2 -> conv -> relu -> global max -> linear: logits, or log-probabilities."""

    def __init__(self, width: int = 16, log_probs: bool = False, num_classes: int = 10):
        super().__init__()
        self.log_probs = log_probs
        self.conv1 = nn.Conv2d(1, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x)).amax((2, 3))
        logits = self.fc(x)
        return F.log_softmax(logits, dim=1) if self.log_probs else logits


class ResidualNet(nn.Module):
    """stem (conv, BatchNorm) -> residual block (two conv + BatchNorm, added to its input) -> two
    branches concatenated -> 1x1 conv -> 2x2 average pool -> flatten -> linear (logits)."""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
        )
        self.left = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.right = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(3 * width, 2 * width, 1)
        self.fc = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        x = F.relu(torch.cat([self.left(x), self.right(x)], dim=1))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.mix(x)), 2).flatten(1))


class LeNet5(nn.Module):
    """LeCun et al. 1998 on 28x28 images: conv 5x5 (6, padded) -> tanh -> 2x2 average pool -> conv 5x5 (16)
    -> tanh -> 2x2 average pool -> flatten (16 x 5 x 5) -> 120 -> tanh -> 84 -> tanh -> logits."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.Tanh(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SeparableNet(nn.Module):
    """conv 3x3 -> relu -> depthwise 3x3 (groups = width) -> relu -> pointwise 1x1 -> relu -> 2x2 max pool
    -> dilated conv 3x3 (dilation 2) -> relu -> global average -> linear (logits)."""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pointwise = nn.Conv2d(width, 2 * width, 1)
        self.dilated = nn.Conv2d(2 * width, 2 * width, 3, padding=2, dilation=2)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.depthwise(F.relu(self.stem(x))))
        x = F.max_pool2d(F.relu(self.pointwise(x)), 2)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.dilated(x)), 1).flatten(1))
