"""The /api/v1 management API: cached models, downloads and operations, over ModelService and
OperationsService. Routes are thin; `translate` holds the protobuf <-> JSON mapping."""
