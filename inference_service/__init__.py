"""miLLM inference service: owns the model, SAE hooks, steering, monitoring and data."""

__version__ = "0.1.0"
