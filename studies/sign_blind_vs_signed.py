# Produced: docs/results.md: the sign-blind dominant input was the main excitatory driver in only 3 of 16 conv2 channels.
"""The old sign-blind "dominant input" of each conv2 channel (the largest mean ||a_kj|| over the
whole map, padding and background included) against the main driver of the signed,
background-corrected contributions (docs/measures.md), on the first 1000 validation images.

    python studies/sign_blind_vs_signed.py RUN/model_state.pt [...]
"""

import os
import sys

import torch

from convdissect.analysis.activations import record
from convdissect.analysis.contributions import contributions, signed_contributions
from convdissect.config import REPO_ROOT
from convdissect.data.mnist import MNISTDataModule
from convdissect.models.checkpoint import load_any_net


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    images, _ = MNISTDataModule(data_dir=os.environ.get("CONVDISSECT_DATA_DIR", str(REPO_ROOT / "data"))).tensors(
        "val", 1000
    )
    for path in paths:
        net = load_any_net(path).eval()
        seen = record(net, images, ["conv2"], what="input")["conv2"]
        norms = sum(
            contributions(net.conv2, seen[s : s + 100]).flatten(3).norm(dim=3).sum(dim=0)
            for s in range(0, len(seen), 100)
        )
        dominant = norms.argmax(dim=1)
        found = signed_contributions(net, "conv2", images)
        main_driver = found.drive.argmax(dim=1)
        inhibiting = int((found.mean[torch.arange(len(dominant)), dominant] < 0).sum())
        print(
            f"{path}: the sign-blind dominant input is the main driver in {int((dominant == main_driver).sum())} of "
            f"{len(dominant)} conv2 channels; it inhibits the channel (mean signed contribution < 0) in {inhibiting}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
