"""Thin gRPC adapters: one module per service, translation in `convert.py`."""
