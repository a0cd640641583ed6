"""Compact subnetwork files (``.nsc``): a random network's subnetwork in one bit per prunable weight.

A weight subnetwork of a frozen random network is fully described by the architecture manifest, the init
recipe (scheme + seed), one bit per prunable weight and one scale per layer; :func:`rebuild` regenerates the
frozen weights with :func:`~netsift.masks.frozen.frozen_network` and bakes the masks into them. Nothing is
pickled. Layout (integers little-endian)::

    8 bytes   magic  b"\\x89NSC\\r\\n\\x1a\\n"
    2 bytes   format version (uint16, currently 1)
    4 bytes   header length H (uint32)
    H bytes   header: UTF-8 JSON (manifest, init, layers with shapes and scales, extras, codec, hashes, ...)
    P bytes   payload, compressed with header["codec"] ("none", "zlib" or "lzma": whichever is smallest)
    32 bytes  SHA-256 of every byte before it (detects truncation and tampering)

The uncompressed payload is, per prunable layer in ``prunable_layers`` order, the mask flattened in C order
and packed with ``numpy.packbits`` (big bit order, each layer padded to a whole byte), followed by the raw
little-endian bytes of each extra tensor (``state.*``: non-prunable state that differs from the regenerated
network) in header order.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from ..checkpoint import atomic_write_bytes, load_checkpoint, read_json
from ..errors import NetsiftError
from ..models import build_from_manifest, check_manifest, network_numel, prunable_layers
from ..schema import COMPACT_HEADER, MODEL_FILE, RESULT_FILE, RUN_CONFIG, SUBNET_FILE, max_params, validate
from ..version import __version__
from .frozen import bake_weight, check_scheme, frozen_network, weights_sha256

MAGIC = b"\x89NSC\r\n\x1a\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHI")
_DIGEST = 32
_DTYPES = {name: getattr(torch, name) for name in ("float32", "float64", "float16", "bfloat16", "int64", "int32",
                                                    "int16", "int8", "uint8", "bool")}
_CODECS = {"none": (lambda b: b, lambda b: b), "zlib": (lambda b: zlib.compress(b, 9), zlib.decompress),
           "lzma": (lambda b: lzma.compress(b, preset=9), lzma.decompress)}


@dataclass
class CompactSubnet:
    """A subnetwork of a frozen random network: what a compact file holds.

    Attributes:
        manifest: architecture manifest (``netsift.models.model_manifest``).
        init: ``{"scheme": ..., "seed": int}`` of the frozen weights.
        masks: ``{layer name: bool tensor of the weight's shape}`` in ``prunable_layers`` order.
        scales: ``{layer name: float32 scalar tensor}``.
        extras: ``{state_dict key: tensor}`` for non-prunable state that differs from the regenerated network.
        info: everything else of the header (``weights_sha256``, ``state_sha256``, ``method``, ``data``,
            ``test_acc``, ...).
    """

    manifest: dict
    init: dict
    masks: dict[str, Tensor]
    scales: dict[str, Tensor]
    extras: dict[str, Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def density(self) -> float:
        """Kept fraction of the prunable weights."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / total if total else 1.0


def state_sha256(state: dict[str, Tensor]) -> str:
    """SHA-256 over a state dict (key, dtype, shape and raw bytes of every entry, in order)."""
    h = hashlib.sha256()
    for key, t in state.items():
        h.update(f"{key}:{str(t.dtype)}:{tuple(t.shape)}".encode())
        h.update(_raw_bytes(t))
    return h.hexdigest()


def dense_bytes(model: nn.Module) -> int:
    """Size in bytes of ``model``'s state dict as a float32 safetensors file (what ``save_model`` writes)."""
    state = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in
             model.state_dict().items()}
    return len(safetensors_bytes(state))


def _raw_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _from_raw(chunk: bytes, dtype: torch.dtype, shape: list[int]) -> Tensor:
    if not chunk:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(chunk), dtype=dtype).reshape(shape).clone()


def subnet_tensors(masked: nn.Module, extracted: nn.Module, frozen: nn.Module | dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of a run folder's ``subnet.safetensors``: ``<layer>.mask`` / ``<layer>.scale`` for every
    masked layer, plus ``state.<key>`` for every other entry of the extracted network's state that differs from
    the regenerated frozen network's (``frozen``, or its state dict; recalibrated batch-norm statistics, say)."""
    from .base import masks_and_scales

    found = masks_and_scales(masked)
    tensors: dict[str, Tensor] = {}
    for name, _ in prunable_layers(extracted):
        mask, scale = found[name]
        tensors[f"{name}.mask"], tensors[f"{name}.scale"] = mask.bool(), scale.float().reshape(())
    weights = {f"{name}.weight" for name, _ in prunable_layers(extracted)}
    reference = frozen if isinstance(frozen, dict) else frozen.state_dict()
    for key, value in extracted.state_dict().items():
        if key not in weights and not torch.equal(value.cpu(), reference[key].cpu()):
            tensors[f"state.{key}"] = value
    return tensors


def subnet_of(manifest: dict, init: dict, masks: dict[str, Tensor], scales: dict[str, Tensor | float],
              extras: dict[str, Tensor] | None = None, **info: Any) -> CompactSubnet:
    """A :class:`CompactSubnet` with ``weights_sha256`` and ``state_sha256`` computed from the regenerated network."""
    subnet = CompactSubnet(manifest, {"scheme": check_scheme(init["scheme"]), "seed": int(init["seed"])},
                           {k: v.detach().cpu().bool() for k, v in masks.items()},
                           {k: torch.as_tensor(v, dtype=torch.float32).detach().cpu().reshape(())
                            for k, v in scales.items()},
                           dict(extras or {}), dict(info))
    frozen = frozen_network(manifest, subnet.init["scheme"], subnet.init["seed"])
    subnet.info["weights_sha256"] = weights_sha256(frozen)
    subnet.info["state_sha256"] = state_sha256(_bake(frozen, subnet, "<new subnet>").state_dict())
    return subnet


def to_bytes(subnet: CompactSubnet) -> bytes:
    """Serialise ``subnet`` in the compact format (the smallest of the codecs is chosen)."""
    layers, chunks = [], []
    for name, mask in subnet.masks.items():
        bits = mask.numpy().astype(bool).reshape(-1)
        chunks.append(np.packbits(bits).tobytes())
        layers.append({"name": name, "shape": list(mask.shape), "scale": float(subnet.scales[name]),
                       "kept": int(bits.sum())})
    extras = []
    for key, t in subnet.extras.items():
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise NetsiftError(f"cannot store tensor {key} of dtype {dtype} in a compact file")
        extras.append({"key": key, "dtype": dtype, "shape": list(t.shape)})
        chunks.append(_raw_bytes(t))
    raw = b"".join(chunks)
    codec, payload = min(((c, enc(raw)) for c, (enc, _) in _CODECS.items()), key=lambda cp: len(cp[1]))
    header = {"format": "netsift-compact", "netsift": __version__, "torch": torch.__version__,
              "manifest": subnet.manifest, "init": subnet.init, **subnet.info, "layers": layers, "extras": extras,
              "codec": codec, "raw_bytes": len(raw), "payload_bytes": len(payload)}
    head = json.dumps(header, separators=(",", ":")).encode()
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def from_bytes(data: bytes, origin: str = "<bytes>") -> CompactSubnet:
    """Parse compact-format bytes; any damage raises a one-line :class:`NetsiftError` naming ``origin``."""
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise NetsiftError(f"{origin} is not a netsift compact file")
    if len(data) < _PREFIX.size + _DIGEST or hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise NetsiftError(f"{origin} is corrupt or truncated: its SHA-256 checksum does not match")
    _, version, head_len = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise NetsiftError(f"{origin} has compact format version {version}; this netsift reads version {FORMAT_VERSION}")
    if _PREFIX.size + head_len > len(data) - _DIGEST:
        raise NetsiftError(f"{origin} is a malformed compact file: its header runs past the end")
    try:
        header = json.loads(data[_PREFIX.size:_PREFIX.size + head_len])
    except (ValueError, RecursionError) as e:
        raise NetsiftError(f"{origin} is a malformed compact file: header is not JSON ({e})") from None
    validate(header, COMPACT_HEADER, f"the header of {origin}")  # types and sizes before anything is built
    _check_sizes(header, origin)
    try:
        payload = data[_PREFIX.size + head_len:-_DIGEST]
        if len(payload) != header["payload_bytes"]:
            raise ValueError("payload length differs from the header's")
        raw = _decompress(header["codec"], payload, header["raw_bytes"])
        if len(raw) != header["raw_bytes"]:
            raise ValueError("decompressed payload length differs from the header's")
        masks, scales, extras, pos = {}, {}, {}, 0
        for layer in header.pop("layers"):
            name, shape = layer["name"], [int(s) for s in layer["shape"]]
            n = int(np.prod(shape))
            nbytes = (n + 7) // 8
            bits = np.unpackbits(np.frombuffer(raw, np.uint8, nbytes, pos), count=n)
            masks[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
            scales[name] = torch.tensor(float(layer["scale"]), dtype=torch.float32)
            pos += nbytes
        for extra in header.pop("extras"):
            dtype, shape = _DTYPES[extra["dtype"]], [int(s) for s in extra["shape"]]
            nbytes = int(np.prod(shape)) * dtype.itemsize
            extras[extra["key"]] = _from_raw(raw[pos:pos + nbytes], dtype, shape)
            pos += nbytes
        if pos != len(raw):
            raise ValueError("payload length does not fit the layers")
        for key in ("format", "netsift", "torch", "codec", "raw_bytes", "payload_bytes"):
            header.pop(key, None)
        manifest, init = header.pop("manifest"), header.pop("init")
        return CompactSubnet(manifest, {"scheme": init["scheme"], "seed": int(init["seed"])}, masks, scales, extras,
                             header)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError, zlib.error, lzma.LZMAError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NetsiftError(f"{origin} is a malformed compact file: {why}") from None


def _check_sizes(header: dict, origin: str) -> None:
    """The payload the header promises must be what its layers and extras need, and of a plausible size."""
    check_manifest(header["manifest"], f"the model manifest in {origin}")
    numel = network_numel(header["manifest"]) or max_params()
    weights = sum(math.prod(layer["shape"]) for layer in header["layers"])
    extras = sum(math.prod(e["shape"]) for e in header["extras"])
    if weights > numel or extras > numel:
        raise NetsiftError(f"{origin} is a malformed compact file: its masks and extras hold more values than its "
                           f"network has ({numel:,})")
    need = sum((math.prod(layer["shape"]) + 7) // 8 for layer in header["layers"])
    need += sum(math.prod(e["shape"]) * _DTYPES[e["dtype"]].itemsize for e in header["extras"])
    if need != header["raw_bytes"]:
        raise NetsiftError(f"{origin} is a malformed compact file: its layers need {need:,} payload bytes, the "
                           f"header says {header['raw_bytes']:,}")


def _decompress(codec: str, payload: bytes, expected: int) -> bytes:
    """Decompress at most ``expected`` + 1 bytes (a compression bomb stops there)."""
    if codec == "none":
        return payload
    if codec == "zlib":
        d = zlib.decompressobj()
        return d.decompress(payload, expected + 1)
    d = lzma.LZMADecompressor()
    return d.decompress(payload, max_length=expected + 1)


def read_compact(path: str | Path) -> CompactSubnet:
    """Read a compact file written by :func:`write_compact` (checksum verified)."""
    path = Path(path)
    if not path.is_file():
        raise NetsiftError(f"compact file not found: {path}")
    return from_bytes(path.read_bytes(), str(path))


def _bake(frozen: nn.Module, subnet: CompactSubnet, origin: str) -> nn.Module:
    """Bake ``subnet``'s masks and scales into the ``frozen`` network in place and load its extras."""
    layers = prunable_layers(frozen)
    if [n for n, _ in layers] != list(subnet.masks):
        raise NetsiftError(f"{origin}: its layers do not match model {subnet.manifest.get('model')}'s prunable layers")
    with torch.no_grad():
        for name, layer in layers:
            mask = subnet.masks[name]
            if tuple(mask.shape) != tuple(layer.weight.shape):
                raise NetsiftError(f"{origin}: mask of {name} has shape {tuple(mask.shape)}, the weight "
                                   f"{tuple(layer.weight.shape)}")
            layer.weight.copy_(bake_weight(layer.weight, mask, subnet.scales[name]))
    if subnet.extras:
        try:
            frozen.load_state_dict({**frozen.state_dict(), **subnet.extras}, strict=True)
        except RuntimeError as e:
            raise NetsiftError(f"{origin}: its extra tensors do not fit the model: {str(e).splitlines()[0]}") from None
    return frozen


def rebuild(subnet: CompactSubnet, origin: str = "the compact file") -> nn.Module:
    """Regenerate the frozen network, check it against the header, bake the masks in and load the extras.

    Raises:
        NetsiftError: the regenerated weights (or the rebuilt state) differ from what the file recorded.
    """
    frozen = frozen_network(subnet.manifest, check_scheme(subnet.init["scheme"]), subnet.init["seed"])
    if weights_sha256(frozen) != subnet.info.get("weights_sha256"):
        raise NetsiftError(f"regenerated weights do not match {origin}: the file was made with another "
                           f"netsift/torch version or was altered")
    model = _bake(frozen, subnet, origin)
    if "state_sha256" in subnet.info and state_sha256(model.state_dict()) != subnet.info["state_sha256"]:
        raise NetsiftError(f"rebuilt network does not match {origin}: the file was made with another "
                           f"netsift/torch version or was altered")
    return model.eval()


def read_run_subnet(run_dir: str | Path) -> CompactSubnet:
    """The subnetwork of a run folder written by ``netsift extract`` (``subnet.safetensors`` + ``subnet.json``).

    The regenerated frozen weights must match the run's ``weights_sha256`` and, where the run has a
    ``model.safetensors``, the masks baked into them must reproduce it exactly.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "subnet.json").is_file():
        raise NetsiftError(f"{run_dir} has no subnet.json: only runs made by `netsift extract` export as compact "
                           f"(use --format safetensors or onnx)")
    tensors, meta = load_checkpoint(run_dir / "subnet", "subnet", SUBNET_FILE)
    try:
        manifest, init = meta["manifest"], meta["init"]
        check_scheme(init["scheme"]), int(init["seed"])
        names = [n for n, _ in prunable_layers(build_from_manifest(manifest))]
        masks = {n: tensors.pop(f"{n}.mask") for n in names}
        scales = {n: tensors.pop(f"{n}.scale") for n in names}
    except (KeyError, TypeError, ValueError) as e:
        raise NetsiftError(f"{run_dir}/subnet is incomplete or malformed ({type(e).__name__}: {e})") from None
    extras = {k.removeprefix("state."): tensors.pop(k) for k in list(tensors) if k.startswith("state.")}
    if tensors:
        raise NetsiftError(f"{run_dir}/subnet.safetensors has unexpected tensors: {', '.join(sorted(tensors))}")
    bad = [n for n, m in masks.items() if m.dtype != torch.bool]
    if bad:
        raise NetsiftError(f"{run_dir}/subnet.safetensors: mask {bad[0]} is {masks[bad[0]].dtype}, not bool")
    config = read_json(run_dir / "config.json", "run config", RUN_CONFIG) if (run_dir / "config.json").is_file() else {}
    result = read_json(run_dir / "result.json", "result", RESULT_FILE) if (run_dir / "result.json").is_file() else {}
    data_cfg = config.get("data") if isinstance(config.get("data"), dict) else None
    data = meta.get("data", config.get("data"))
    info = {"method": meta.get("method", config.get("method")),
            "data": data.get("data") if isinstance(data, dict) else data,
            "test_acc": meta.get("test_acc", result.get("test_acc")),
            "seed": config.get("data_seed", config.get("seed", 0)),
            **({"data_config": {**data_cfg, "data_dir": None, "download": False}} if data_cfg else {})}
    subnet = subnet_of(manifest, init, masks, scales, extras, **info)
    if subnet.info["weights_sha256"] != meta.get("weights_sha256"):
        raise NetsiftError(f"regenerated weights do not match {run_dir}/subnet.json: the run was made with another "
                           f"netsift/torch version or was altered")
    if (run_dir / "model.safetensors").is_file():
        saved, _ = load_checkpoint(run_dir / "model", "model", MODEL_FILE)
        rebuilt = rebuild(subnet, str(run_dir)).state_dict()
        diff = [k for k in rebuilt if k not in saved or not torch.equal(saved[k], rebuilt[k])]
        diff += sorted(set(saved) - set(rebuilt))
        if diff:
            raise NetsiftError(f"{run_dir}/model.safetensors differs from its masks baked into the regenerated "
                               f"weights (first at {diff[0]})")
    return subnet


def write_compact(run_dir: str | Path, path: str | Path) -> dict:
    """Write the subnetwork of run folder ``run_dir`` as a compact file at ``path`` (atomically).

    Returns:
        sizes: ``compact_bytes``, ``dense_bytes`` (float32 safetensors of the baked network), ``ratio``,
        ``codec``, ``density`` and ``path``.
    """
    subnet = read_run_subnet(run_dir)
    data = to_bytes(subnet)
    atomic_write_bytes(path, data)
    return sizes(subnet, data, path)


def sizes(subnet: CompactSubnet, data: bytes, path: str | Path | None = None) -> dict:
    """Compact size vs the float32 safetensors size of the rebuilt network."""
    dense = dense_bytes(rebuild(subnet))
    return {"path": str(path) if path else None, "compact_bytes": len(data), "dense_bytes": dense,
            "ratio": dense / len(data), "header_bytes": _PREFIX.unpack_from(data)[2],
            "codec": header_of(data)["codec"], "density": subnet.density}


def header_of(data: bytes) -> dict:
    """The JSON header of compact-format bytes, unchecked (for inspection; :func:`from_bytes` verifies)."""
    head_len = _PREFIX.unpack_from(data)[2]
    return json.loads(data[_PREFIX.size:_PREFIX.size + head_len])
