"""convdissect: train, prune, dissect and hand-build explainable MNIST ConvNets.

From Python: `from convdissect import dissect_net, prune_net` (convdissect.api)."""


def __getattr__(name: str):
    # `import convdissect` stays light (no torch, Hydra or matplotlib) until the API is asked for
    if name in ("dissect_net", "prune_net", "Dissection"):
        from convdissect import api

        return getattr(api, name)
    raise AttributeError(f"module 'convdissect' has no attribute {name!r}")
