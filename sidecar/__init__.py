"""lease-sidecar: leader election for any pod, over a coordination.k8s.io/v1 Lease."""

__version__ = "0.1.0"
