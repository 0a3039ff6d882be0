"""The /api/v1 management API: cached models, downloads and operations, SAEs, steering,
profiles and monitoring, over the inference service's management RPCs. Routes are thin;
`translate` and `steering_translate` hold the protobuf <-> JSON mapping."""
