"""kiln: bakes Kubernetes node VM images."""

__version__ = "0.1.0"
