"""The model runtime: loading, the worker lane, the generation loop, embeddings."""
