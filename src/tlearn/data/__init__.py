"""Datasets for tlearn: specs to sources, robust decoding, splits and transforms."""

from tlearn.data.builtin import (
    BUILTIN_DATASETS,
    builtin_name,
    datasets_cache_dir,
    load_builtin,
    locate_builtin,
)
from tlearn.data.images import IMAGE_EXTENSIONS, find_images, open_image
from tlearn.data.sources import ArraySource, CsvSource, FolderSource, ImageSource, SubsetSource
from tlearn.data.splits import (
    Splits,
    load_eval_source,
    load_train_splits,
    stratified_indices,
    stratified_split,
)
from tlearn.data.transforms import (
    AUGMENTATIONS,
    MultiTransform,
    SafeTransformDataset,
    build_transform,
    collate_skip_none,
    find_unreadable,
)

__all__ = [
    "AUGMENTATIONS",
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "CsvSource",
    "FolderSource",
    "ImageSource",
    "MultiTransform",
    "SafeTransformDataset",
    "Splits",
    "SubsetSource",
    "build_transform",
    "builtin_name",
    "collate_skip_none",
    "datasets_cache_dir",
    "find_images",
    "find_unreadable",
    "load_builtin",
    "load_eval_source",
    "load_train_splits",
    "locate_builtin",
    "open_image",
    "stratified_indices",
    "stratified_split",
]
