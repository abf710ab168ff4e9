"""Channel pruning in parts: which channels (criteria), how many and when (schedule), the cut
itself (cut.py), what it costs and keeps (measure), and its figure. The pruning
callback (pruning/callback.py) runs them inside a fit."""
