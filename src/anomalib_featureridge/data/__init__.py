"""Data helpers: the generated MVTec-layout defect dataset."""

from .synthetic import DEFECT_TYPES, SyntheticSpec, make_synthetic_dataset

__all__ = ["DEFECT_TYPES", "SyntheticSpec", "make_synthetic_dataset"]
