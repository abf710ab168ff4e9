"""The article's SimpleConvNet (design.md §1), with the no_conv2 variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convdissect.errors import UserInputError

FULL_WIDTHS = [32, 64, 128, 128]
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "identity": nn.Identity}


def check_widths(widths, conv2: bool) -> list[int]:
    want = 4 if conv2 else 3
    names = "[c1, c2, c3, f4]" if conv2 else "[c1, c3, f4] (conv2=false)"
    if not isinstance(widths, (list, tuple)):
        raise UserInputError(f"model.widths={widths}: expected a list of {want} values {names}")
    widths = list(widths)
    if len(widths) != want:
        raise UserInputError(f"model.widths={widths}: expected {want} values {names}")
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise UserInputError(f"model.widths={widths}: every width must be a positive integer")
    return widths


class SimpleConvNet(nn.Module):
    """(conv1+relu+pool2) -> (conv2+relu+pool2) -> (conv3+relu+pool3) -> fc4 -> fc5 -> log_softmax.

    With conv2=False: conv1 -> relu -> pool4 -> conv3 (7x7 -> 3x3), the article's claim that
    conv2 only amplifies conv1. Module names match plain state_dicts from elsewhere.
    """

    def __init__(self, widths=FULL_WIDTHS, conv2: bool = True, fc4_activation: str = "relu"):
        super().__init__()
        if fc4_activation not in ACTIVATIONS:
            raise UserInputError(f"model.fc4_activation={fc4_activation!r}: allowed {sorted(ACTIVATIONS)}")
        self.widths = check_widths(widths, conv2)
        if conv2:
            c1, c2, c3, f4 = self.widths
        else:
            c1, c3, f4 = self.widths
        self.has_conv2 = conv2
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        if conv2:
            self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.conv3 = nn.Conv2d(c2 if conv2 else c1, c3, 5)
        self.fc4 = nn.Linear(c3, f4)
        self.fc4_act = ACTIVATIONS[fc4_activation]()
        self.fc5 = nn.Linear(f4, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """conv3's pooled output, flattened: [N, c3]."""
        x = F.relu(self.conv1(x))
        if self.has_conv2:
            x = F.max_pool2d(F.relu(self.conv2(F.max_pool2d(x, 2))), 2)  # 14x14 -> 7x7
        else:
            x = F.max_pool2d(x, 4)  # 7x7
        x = F.max_pool2d(F.relu(self.conv3(x)), 3)  # 3x3 -> 1x1
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc4_act(self.fc4(self.features(x)))
        return F.log_softmax(self.fc5(x), dim=1)

    @staticmethod
    def widths_from_state_dict(state_dict) -> tuple[list[int], bool]:
        """Widths and conv2 flag of a plain state_dict with our key names."""
        conv2 = "conv2.weight" in state_dict
        names = ["conv1", "conv2", "conv3", "fc4"] if conv2 else ["conv1", "conv3", "fc4"]
        return [int(state_dict[f"{n}.weight"].shape[0]) for n in names], conv2
