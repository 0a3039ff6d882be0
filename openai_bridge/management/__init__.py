"""The /api/v1 management API: cached models, downloads and operations, SAEs, steering,
profiles, monitoring and SAE training, over the inference service's management RPCs.
Routes are thin; `translate`, `steering_translate` and `training_translate` hold the
protobuf <-> JSON mapping."""
