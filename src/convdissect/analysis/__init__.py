"""Measurements of any trained net: activations, contributions, fits, selectivity, projections, superstimuli, untangling."""
