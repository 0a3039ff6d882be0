"""Steering: SAE features turned up or down in the residual stream (docs/steering.md)."""
