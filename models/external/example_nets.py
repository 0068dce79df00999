"""Example of a custom teacher architecture (train_teacher.arch = models.external.example_nets:TinyBNNet)."""

import torch
from torch import nn


class TinyBNNet(nn.Module):
    """Three conv-BN-ReLU blocks (the last two at stride 2), global average pooling and a linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        self.features = nn.Sequential(
            *(
                nn.Sequential(nn.Conv2d(cin, cout, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
                for i, (cin, cout) in enumerate(zip(chans, chans[1:]))
            )
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))
