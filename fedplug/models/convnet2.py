"""ConvNet2: the two-layer CNN of the FEMNIST column (62 classes: digits and letters).

conv5x5(in->32)+BN+ReLU+pool2 -> conv5x5(32->64)+BN+ReLU+pool2 -> FC(3136->2048)+ReLU -> FC(2048->classes).
With the defaults (1 channel, 62 classes, 28x28 input) it has exactly 6,603,902 parameters,
BatchNorm weights/biases included (running statistics are buffers, not parameters).
The BatchNorm layers are named ``bn1``/``bn2`` so FedBN's default pattern "bn" keeps them local.
"""
from __future__ import annotations

import torch
from torch import nn


class ConvNet2(nn.Module):
    def __init__(
        self, in_channels: int = 1, num_classes: int = 62, hidden: int = 2048, input_size: int = 28
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_size = input_size
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(2)
        side = input_size // 2 // 2  # two 2x2 poolings: 28 -> 14 -> 7
        self.fc1 = nn.Linear(64 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Accept flat pixels (batch, C*H*W) as well as images (batch, C, H, W).
        x = x.reshape(-1, self.in_channels, self.input_size, self.input_size)
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
