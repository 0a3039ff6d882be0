"""Long-running operations: progress snapshots that clients can re-watch, and cancel."""
