"""A short digest of what a source holds, so cached features are reused only for the same data.

Files are identified by path, size and modification time (reading every byte of a large folder
would cost as much as decoding it); in-memory arrays by their bytes; subsets by their parent and
the chosen indices. Labels are part of the digest: relabelled data is different data.
"""

from __future__ import annotations

import hashlib

import numpy as np

from tlearn.data.sources import ArraySource, FolderSource, ImageSource, SubsetSource


def fingerprint(source: ImageSource) -> str:
    h = hashlib.blake2b(digest_size=16)
    _feed(h, source)
    return h.hexdigest()


def _feed(h: hashlib.blake2b, source: ImageSource) -> None:
    h.update(type(source).__name__.encode())
    h.update("\0".join(source.classes).encode())
    h.update(np.ascontiguousarray(source.targets).tobytes())
    if isinstance(source, SubsetSource):
        h.update(np.ascontiguousarray(source.indices, dtype=np.int64).tobytes())
        _feed(h, source.source)
    elif isinstance(source, ArraySource):
        h.update(str(source.images.shape).encode())
        h.update(np.ascontiguousarray(source.images).data)
    elif isinstance(source, FolderSource):
        for path in source.paths:
            try:
                st = path.stat()
                line = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n"
            except OSError:
                line = f"{path}|missing\n"
            h.update(line.encode("utf-8", "surrogateescape"))  # names need not be UTF-8
    else:  # an unknown kind of source: never share its cache entries
        h.update(repr(id(source)).encode())
