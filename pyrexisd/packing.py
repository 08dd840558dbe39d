"""msgpack packing on the event loop's hot paths.

``msgpack.packb`` builds a new ``Packer`` for every call, which costs three times the
packing of a small map; :func:`pack` reuses one. Use it from the event loop's thread
only: a packer is not meant to be shared between threads. It starts each call with an
empty buffer, and a call that fails (a value msgpack cannot store) leaves none behind.
"""

from __future__ import annotations

from typing import Any

import msgpack

_packer = msgpack.Packer(use_bin_type=True)


def pack(value: Any) -> bytes:
    """``value`` as msgpack (``bin`` for bytes), like ``msgpack.packb(value, use_bin_type=True)``."""
    return _packer.pack(value)  # type: ignore[no-any-return]
