"""Steering: SAE features turned up or down in the residual stream (DESIGN section 3)."""
