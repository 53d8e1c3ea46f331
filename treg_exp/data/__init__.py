from treg_exp.data.base import ImageDataset, Sample

__all__ = ["ImageDataset", "Sample"]
