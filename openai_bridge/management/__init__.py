"""The /api/v1 management API: cached models, downloads and operations, SAEs, steering,
profiles, monitoring and SAE training, over the inference service's management RPCs.
One module per resource holds its routes and what is particular to its translation;
`openai_bridge.proto_json` maps every message, and `schemas` types every request body."""
