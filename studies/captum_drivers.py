# Produced: the Captum comparison of issue 23's closing note and docs/measures.md ("An outside reference").
"""conv2's main drivers by dissect's signed contributions against Captum's LayerConductance.

    PYTHONPATH=. python studies/captum_drivers.py RUN/model_state.pt [--images 500]

For each conv2 channel: the input with the largest share of its drive (dissect) and the input
with the largest conductance (Captum, integrated gradients from the blank image through conv1's
pooled output, summed over images and cells). Printed: how often the two top inputs agree, how
often ours is in Captum's top 2, chance (1 / conv1's width), and every disagreement.
"""

from __future__ import annotations

import argparse
import os

import torch

from convdissect.analysis.contributions import signed_contributions
from convdissect.data.mnist import MNISTDataModule
from convdissect.models.checkpoint import load_net
from tests.helpers import conductance_drivers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("state", help="a SimpleConvNet's model_state.pt")
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = load_net(args.state).eval()
    images, _ = MNISTDataModule(data_dir=os.environ.get("CONVDISSECT_DATA_DIR", "data")).tensors("val", args.images)
    drive = signed_contributions(net, "conv2", images).drive
    captum = conductance_drivers(net, images)
    ours, theirs = drive.argmax(dim=1), captum.argmax(dim=1)
    in_top2 = (captum.topk(2, dim=1).indices == ours[:, None]).any(dim=1)
    c2, c1 = drive.shape
    print(
        f"top input agrees: {int((ours == theirs).sum())}/{c2}; ours in Captum's top 2: {int(in_top2.sum())}/{c2}; chance {c2 / c1:.1f}/{c2}"
    )
    for k in (ours != theirs).nonzero()[:, 0].tolist():
        a, b = int(ours[k]), int(theirs[k])
        print(
            f"conv2_{k + 1}: ours conv1_{a + 1} (share {drive[k, a]:.2f}, Captum rank {int((captum[k] > captum[k, a]).sum()) + 1}); "
            f"Captum conv1_{b + 1} (our share {drive[k, b]:.2f})"
        )


if __name__ == "__main__":
    main()
