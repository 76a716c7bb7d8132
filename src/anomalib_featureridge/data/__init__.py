"""Data: reading images (images), synthetic defects on real images (defects), the generated demo (demo_dataset)."""

from .demo_dataset import DEFECT_TYPES, SyntheticSpec, make_synthetic_dataset

__all__ = ["DEFECT_TYPES", "SyntheticSpec", "make_synthetic_dataset"]
