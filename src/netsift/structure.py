"""The structure hash of a network: what it is, independent of its weights and of its class name.

Two networks with the same parameter and buffer names, shapes and dtypes have the same hash; a network of your
own class is fully described by it (with its code at hand), so it keys the series of ``netsift report`` and
checks that a compact file is loaded into the module it was made from.
"""

from __future__ import annotations

import hashlib

from torch import nn

SHORT = 8
"""Characters of the hash shown in reports and messages."""


def entries(model: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, dtype, shape)`` of every parameter and buffer of ``model`` (its state dict), sorted by name."""
    return sorted((k, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in model.state_dict().items())


def structure_hash(model: nn.Module) -> str:
    """SHA-256 (hex) of :func:`entries`."""
    h = hashlib.sha256()
    for name, dtype, shape in entries(model):
        h.update(f"{name}:{dtype}:{','.join(map(str, shape))};".encode())
    return h.hexdigest()


def short(digest: str | None) -> str:
    """The first :data:`SHORT` characters of a hash (``?`` when unknown)."""
    return digest[:SHORT] if digest else "?"
