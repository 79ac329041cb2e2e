"""gzip for ``.nii.gz`` files: through ``isal`` (Intel's ISA-L, the same gzip format, about 10x
faster to compress at level 1 and 1.3x to decompress) when it is installed, else through
``zlib`` at nibabel's level 1. Both release the GIL, so echoes decompress in threads.
:mod:`t2starmap.bids.nifti` reads and writes every image through this.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

try:  # optional speed-up; the same bytes format
    from isal import igzip as gzip_lib
except ImportError:  # pragma: no cover - exercised where isal is missing
    gzip_lib = None  # type: ignore[assignment]

#: gzip level of written maps: nibabel's default (fast, nearly as small as level 6 on maps).
COMPRESS_LEVEL = 1
#: The first two bytes of a gzip stream.
MAGIC = b"\x1f\x8b"
#: What reading a damaged or cut-short image raises (the gzip layer's and nibabel's errors).
DAMAGED = (OSError, EOFError, ValueError, zlib.error)


def decompress(data: bytes) -> bytes:
    """The bytes of every gzip member of ``data``. Raises one of :data:`DAMAGED` when the stream
    is damaged or cut short."""
    if gzip_lib is not None:
        return bytes(gzip_lib.decompress(data))
    return gzip.decompress(data)


@contextmanager
def output(stream: BinaryIO, compress: bool) -> Iterator[BinaryIO]:
    """``stream``, or a gzip stream into it when ``compress``. The gzip header carries no name
    and no time: the same map gives the same bytes."""
    if not compress:
        yield stream
        return
    opener: Any = gzip_lib.IGzipFile if gzip_lib is not None else gzip.GzipFile
    with opener(
        filename="", mode="wb", compresslevel=COMPRESS_LEVEL, fileobj=stream, mtime=0
    ) as gz:
        yield gz
