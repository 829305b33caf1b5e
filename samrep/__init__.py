"""samrep: a reproducible cross-vendor inference benchmark for SAM ViT-H."""

__version__ = "0.1.0"
