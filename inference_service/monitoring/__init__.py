"""Monitoring: which SAE features fire on live traffic."""
