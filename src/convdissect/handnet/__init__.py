"""The HandNet: parametric layers, the net, its recipes, its explanation and its training callbacks."""
