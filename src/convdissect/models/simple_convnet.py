"""The article's SimpleConvNet (docs/measures.md, "The nets"), with the no_conv2 variant."""

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


@torch.no_grad()
def equivalent_simple_convnet(net: nn.Module, images: torch.Tensor) -> SimpleConvNet | None:
    """The SimpleConvNet that computes what `net` computes, or None: net's Conv2d and Linear modules (in
    the order they were registered) read as conv1 (conv2) conv3 fc4 fc5 where their shapes fit, and the
    two nets' log-probabilities compared on `images` (a user's nn.Sequential of the article's net is then
    dissected as it, the article's claims included)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if len(convs) not in (2, 3) or len(linears) != 2 or any(m.bias is None for m in convs + linears):
        return None
    widths = [conv.out_channels for conv in convs] + [linears[0].out_features]
    theirs = [p for m in convs + linears for p in (m.weight, m.bias)]
    expected = F.log_softmax(net.eval()(images), dim=1)
    for activation in ACTIVATIONS:
        candidate = SimpleConvNet(widths, conv2=len(convs) == 3, fc4_activation=activation).to(images.device)
        ours = list(candidate.parameters())
        if any(a.shape != b.shape for a, b in zip(ours, theirs)):
            return None
        for a, b in zip(ours, theirs):
            a.copy_(b)
        if expected.shape == (len(images), 10) and torch.allclose(candidate.eval()(images), expected, atol=1e-4):
            return candidate
    return None
