"""Explainable lead scoring: synthetic training data, two model versions, the chain."""
