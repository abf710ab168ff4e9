"""convdissect: train, prune, dissect and hand-build explainable MNIST ConvNets."""
