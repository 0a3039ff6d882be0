"""Sparse autoencoders: what one is (spec), its math (architectures) and its files (formats)."""
