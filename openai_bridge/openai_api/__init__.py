"""The OpenAI-compatible `/v1` API: protocol models, translation, one module per endpoint."""
