"""Datasets for tlearn: specs to sources, robust decoding, splits and transforms."""

from tlearn.data.augment import AUGMENTATIONS, BatchMixer, MixedLoader, Recipe, preset
from tlearn.data.builtin import (
    BUILTIN_DATASETS,
    builtin_name,
    datasets_cache_dir,
    load_builtin,
    locate_builtin,
)
from tlearn.data.decoded import (
    DecodedImages,
    DecodedLoader,
    decoded_bytes,
    default_memory_limit,
    fast_image_loader,
    fits_in_memory,
    stored_size,
)
from tlearn.data.images import IMAGE_EXTENSIONS, find_images, open_image
from tlearn.data.loaders import default_workers, image_loader
from tlearn.data.sources import ArraySource, CsvSource, FolderSource, ImageSource, SubsetSource
from tlearn.data.splits import (
    Splits,
    has_held_out_part,
    load_eval_source,
    load_train_splits,
    stratified_indices,
    stratified_split,
)
from tlearn.data.transforms import (
    MultiTransform,
    SafeTransformDataset,
    build_transform,
    collate_skip_none,
    find_unreadable,
)

__all__ = [
    "AUGMENTATIONS",
    "BatchMixer",
    "MixedLoader",
    "Recipe",
    "preset",
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "CsvSource",
    "DecodedImages",
    "DecodedLoader",
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
    "decoded_bytes",
    "default_workers",
    "image_loader",
    "default_memory_limit",
    "fast_image_loader",
    "find_images",
    "find_unreadable",
    "fits_in_memory",
    "load_builtin",
    "has_held_out_part",
    "load_eval_source",
    "load_train_splits",
    "locate_builtin",
    "open_image",
    "stratified_indices",
    "stratified_split",
    "stored_size",
]
