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

import copy
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

from .. import rundir
from ..checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from ..errors import NetsiftError
from ..models import build_from_manifest, check_manifest, network_numel, prunable_layers
from ..schema import COMPACT_HEADER, MODEL_FILE, SUBNET_FILE, max_params, validate
from ..structure import short, structure_hash
from ..version import __version__
from .frozen import bake_weight, check_scheme, frozen_network, init_frozen, weights_sha256

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


def is_custom(manifest: dict) -> bool:
    """Whether ``manifest`` describes a module of your own (``custom:<class>``, with its structure hash)."""
    return str(manifest.get("model", "")).startswith("custom:")


def custom_manifest(model: nn.Module) -> dict:
    """The manifest of a module of your own: its class name and structure hash (:mod:`netsift.structure`)."""
    return {"model": f"custom:{type(model).__qualname__}", "structure": structure_hash(model)}


def check_structure(model: nn.Module, manifest: dict, origin: str) -> None:
    """Refuse (one line) a module whose parameter and buffer names, shapes or dtypes are not the file's."""
    if not isinstance(model, nn.Module):
        raise NetsiftError(f"model must be an nn.Module instance (e.g. MyNet()), got {type(model).__name__}")
    want, have = manifest.get("structure"), structure_hash(model)
    if want is not None and want != have:
        raise NetsiftError(f"{type(model).__qualname__} does not match {origin}: its structure hash is {short(have)}, "
                           f"the file's {short(want)} ({manifest.get('model')}): other layers, shapes or dtypes")


def _state_hash(manifest: dict, state: dict[str, Tensor]) -> str:
    """State hash of a rebuilt network (a module of your own: keys sorted, so attribute order does not matter)."""
    return state_sha256(dict(sorted(state.items())) if is_custom(manifest) else state)


def _poisoned(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every tensor holds a value no init gives (NaN, negated bools, +1 integers): after
    :func:`~.frozen.init_frozen`, what still differs from the original was not regenerated from the seed."""
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for t in [*copy_.parameters(), *copy_.buffers()]:
            if t.is_floating_point() or t.is_complex():
                t.fill_(float("nan"))
            elif t.dtype == torch.bool:
                t.logical_not_()
            else:
                t.add_(1)
    return copy_


def frozen_of(manifest: dict, init: dict, model: nn.Module | None = None, origin: str = "the compact file"
              ) -> nn.Module:
    """The frozen random network ``(manifest, init)`` describes: a zoo network built from its manifest, or a copy of
    your ``model`` (same structure, checked) re-drawn from the seed.

    Raises:
        NetsiftError: a module of your own without ``model``, or a ``model`` of another structure.
    """
    scheme, seed = check_scheme(init["scheme"]), int(init["seed"])
    if not is_custom(manifest):
        return frozen_network(manifest, scheme, seed)
    if model is None:
        raise NetsiftError(f"{origin} holds a subnetwork of your own module ({manifest['model'][7:]}): pass a fresh "
                           f"instance of it (netsift.load_compact(path, model=MyNet()); CLI: --module FILE.py:MyNet)")
    check_structure(model, manifest, origin)
    return init_frozen(copy.deepcopy(model), scheme, seed)


def subnet_of(manifest: dict, init: dict, masks: dict[str, Tensor], scales: dict[str, Tensor | float],
              extras: dict[str, Tensor] | None = None, model: nn.Module | None = None, **info: Any) -> CompactSubnet:
    """A :class:`CompactSubnet` with ``weights_sha256`` and ``state_sha256`` computed from the regenerated network
    (``model``: an instance of your own module, for a ``custom:`` manifest)."""
    subnet = CompactSubnet(manifest, {"scheme": check_scheme(init["scheme"]), "seed": int(init["seed"])},
                           {k: v.detach().cpu().bool() for k, v in masks.items()},
                           {k: torch.as_tensor(v, dtype=torch.float32).detach().cpu().reshape(())
                            for k, v in scales.items()},
                           dict(extras or {}), dict(info))
    frozen = frozen_of(manifest, subnet.init, model, "<new subnet>")
    subnet.info["weights_sha256"] = weights_sha256(frozen)
    subnet.info["state_sha256"] = _state_hash(manifest, _bake(frozen, subnet, "<new subnet>").state_dict())
    return subnet


def capture(masked: nn.Module, extracted: nn.Module, manifest: dict | None, scheme: str, seed: int, /,
            **info: Any) -> CompactSubnet:
    """The subnetwork ``extracted`` is, from the masked network it came from: what a compact file holds.

    ``manifest``: a zoo network's (its frozen weights are rebuilt from it), ``None`` for a module of your own (a
    copy of ``extracted`` is re-drawn from the seed; tensors the seed does not give, such as a parameter without
    a reset method, go in as extras). The rebuilt network is checked against ``extracted`` bit for bit.

    Raises:
        NetsiftError: the network cannot be regenerated from the seed (naming the first tensor that differs).
    """
    from .base import masks_and_scales

    found = masks_and_scales(masked)
    names = [n for n, _ in prunable_layers(extracted)]
    masks, scales = {n: found[n][0] for n in names}, {n: found[n][1] for n in names}
    if manifest is None:
        manifest, reference = custom_manifest(extracted), init_frozen(_poisoned(extracted), scheme, seed)
    else:
        reference = frozen_network(manifest, scheme, seed)
    weights = {f"{n}.weight" for n in names}
    want = extracted.state_dict()
    extras = {k: want[k].detach().cpu().clone() for k in sorted(want)
              if k not in weights and not torch.equal(want[k].cpu(), reference.state_dict()[k].cpu())}
    subnet = subnet_of(manifest, {"scheme": scheme, "seed": seed}, masks, scales, extras,
                       extracted if is_custom(manifest) else None, dense_bytes=dense_bytes(extracted), **info)
    rebuilt = _bake(frozen_of(manifest, subnet.init, extracted), subnet, "<new subnet>").state_dict()
    diff = next((k for k in want if not torch.equal(want[k].cpu(), rebuilt[k].cpu())), None)
    if diff is not None:
        raise NetsiftError(f"the subnetwork cannot be rebuilt from the seed: {diff} differs")
    return subnet


def compact_of_run(masked: nn.Module, extracted: nn.Module, manifest: dict | None, scheme: str | None, seed: int,
                   trained: bool, bundle: Any, data_seed: int = 0, **info: Any) -> CompactSubnet | None:
    """The compact subnetwork of an extract run (:func:`capture`, with what the run was made on: ``data``,
    ``data_config`` of a built-in data set, ``input_shape``, ``num_classes``), or ``None`` with a progress line
    saying why: weights that no seed regenerates (``scheme`` ``None``: the network's own; ``trained``)."""
    from .. import progress

    why = ("its frozen weights are the network's own (weights file or init=None): no seed regenerates them"
           if scheme is None else "its weights were trained (train_weights): no seed regenerates them"
           if trained else None)
    if why is None:
        with torch.no_grad():
            p = next(iter(extracted.parameters()), None)
            out = extracted.eval()(torch.zeros(1, *bundle.input_shape, device=p.device if p is not None else "cpu"))
        record = {"data": bundle.name, "seed": data_seed, "input_shape": [int(d) for d in bundle.input_shape],
                  "num_classes": int(bundle.num_classes or out.shape[1])}
        if bundle.config is not None:
            record["data_config"] = {k: v for k, v in {**bundle.config, "data_dir": None, "download": False}.items()
                                     if k in DATA_CONFIG_KEYS}
        try:
            return capture(masked, extracted, manifest, scheme, seed, **record, **info)
        except NetsiftError as e:
            why = str(e)
    if progress.mode() != "off":
        progress.write(f"no compact subnetwork file: {why}")
    return None


def subnet_tensors(subnet: CompactSubnet) -> dict[str, Tensor]:
    """The tensors of a run folder's ``subnet.safetensors``: ``<layer>.mask`` / ``<layer>.scale`` for every
    masked layer, plus ``state.<key>`` for every other entry of the extracted network's state that differs from
    the regenerated frozen network's (recalibrated batch-norm statistics, say)."""
    tensors: dict[str, Tensor] = {}
    for name, mask in subnet.masks.items():
        tensors[f"{name}.mask"], tensors[f"{name}.scale"] = mask, subnet.scales[name]
    tensors.update({f"state.{k}": v for k, v in subnet.extras.items()})
    return tensors


def save_run_subnet(run_dir: str | Path, subnet: CompactSubnet) -> None:
    """Write ``subnet.safetensors`` + ``subnet.json`` into a run folder."""
    meta = {"manifest": subnet.manifest, "init": subnet.init, "layers": list(subnet.masks), **subnet.info}
    save_checkpoint(rundir.artifact(run_dir, "subnet"), subnet_tensors(subnet), meta)


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


def rebuild(subnet: CompactSubnet, origin: str = "the compact file", model: nn.Module | None = None) -> nn.Module:
    """Regenerate the frozen network, check it against the header, bake the masks in and load the extras.

    ``model``: a fresh instance of the module the subnetwork was made from (needed for a module of your own,
    optional for a zoo network); it is filled in place and returned, after its structure hash is checked.

    Raises:
        NetsiftError: another structure, or regenerated weights (or a rebuilt state) that differ from the file's.
    """
    frozen = frozen_of(subnet.manifest, subnet.init, model, origin)
    if model is not None and not is_custom(subnet.manifest):
        check_structure(model, {"structure": structure_hash(frozen), "model": subnet.manifest["model"]}, origin)
    if weights_sha256(frozen) != subnet.info.get("weights_sha256"):
        raise NetsiftError(f"regenerated weights do not match {origin}: the file was made with another "
                           f"netsift/torch version or was altered")
    rebuilt = _bake(frozen, subnet, origin)
    if "state_sha256" in subnet.info and _state_hash(subnet.manifest, rebuilt.state_dict()) != subnet.info[
            "state_sha256"]:
        raise NetsiftError(f"rebuilt network does not match {origin}: the file was made with another "
                           f"netsift/torch version or was altered")
    if model is None:
        return rebuilt.eval()
    model.load_state_dict(rebuilt.state_dict())
    return model.eval()


def load_compact(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The network of compact file ``path`` (checksum, structure and rebuilt weights verified), in eval mode.

    ``model``: a fresh instance of the module the subnetwork was made from: required for a module of your own
    (``netsift.load_compact("model.nsc", model=MyNet())``), optional for a zoo network; it is filled in place.

    Raises:
        NetsiftError: a damaged file, a module of another structure, or weights that cannot be regenerated.
    """
    return rebuild(read_compact(path), str(path), model)


def read_run_subnet(run_dir: str | Path, model: nn.Module | None = None) -> CompactSubnet:
    """The subnetwork of a run folder written by ``netsift extract`` (``subnet.safetensors`` + ``subnet.json``).

    The regenerated frozen weights must match the run's ``weights_sha256`` and, where the run has a
    ``model.safetensors``, the masks baked into them must reproduce it exactly. A run of your own module is
    checked that way when ``model`` (a fresh instance) is given; without it, the hashes recorded at extraction
    are kept.
    """
    run_dir = Path(run_dir)
    tensors, meta = _run_subnet_files(run_dir)
    try:
        manifest, init = meta["manifest"], meta["init"]
        check_scheme(init["scheme"]), int(init["seed"])
        names = meta["layers"] if is_custom(manifest) else [n for n, _ in prunable_layers(build_from_manifest(manifest))]
        masks = {n: tensors.pop(f"{n}.mask") for n in names}
        scales = {n: tensors.pop(f"{n}.scale") for n in names}
    except (KeyError, TypeError, ValueError) as e:
        raise NetsiftError(f"{run_dir}/subnet is incomplete or malformed ({type(e).__name__}: {e})") from None
    extras = {k.removeprefix("state."): tensors.pop(k) for k in sorted(tensors) if k.startswith("state.")}
    if tensors:
        raise NetsiftError(f"{run_dir}/subnet.safetensors has unexpected tensors: {', '.join(sorted(tensors))}")
    bad = [n for n, m in masks.items() if m.dtype != torch.bool]
    if bad:
        raise NetsiftError(f"{run_dir}/subnet.safetensors: mask {bad[0]} is {masks[bad[0]].dtype}, not bool")
    info = _run_info(run_dir, meta)
    if is_custom(manifest) and model is None:
        return CompactSubnet(manifest, {"scheme": init["scheme"], "seed": int(init["seed"])}, masks,
                             {k: v.float().reshape(()) for k, v in scales.items()}, extras,
                             {**info, "weights_sha256": meta["weights_sha256"], "state_sha256": meta.get("state_sha256")})
    subnet = subnet_of(manifest, init, masks, scales, extras, model, **info)
    if subnet.info["weights_sha256"] != meta.get("weights_sha256"):
        raise NetsiftError(f"regenerated weights do not match {run_dir}/subnet.json: the run was made with another "
                           f"netsift/torch version or was altered")
    if (run_dir / "model.safetensors").is_file():
        saved, _ = load_checkpoint(run_dir / "model", "model", MODEL_FILE)
        rebuilt = rebuild(subnet, str(run_dir), copy.deepcopy(model) if model is not None else None).state_dict()
        diff = [k for k in rebuilt if k not in saved or not torch.equal(saved[k], rebuilt[k])]
        diff += sorted(set(saved) - set(rebuilt))
        if diff:
            raise NetsiftError(f"{run_dir}/model.safetensors differs from its masks baked into the regenerated "
                               f"weights (first at {diff[0]})")
    return subnet


def _run_subnet_files(run_dir: Path) -> tuple[dict, dict]:
    """The tensors and metadata of ``run_dir/subnet``, or a one-line error saying why there are none."""
    if not (run_dir / "subnet.json").is_file():
        config = rundir.read_run(run_dir).config
        mask = config.get("mask") if isinstance(config.get("mask"), dict) else {}
        if config.get("command") == "extract" and mask.get("init") == "keep":
            raise NetsiftError(f"{run_dir} has no compact subnetwork: its frozen weights are the network's own "
                               "(--weights or init=None), which no seed regenerates; export it as safetensors or onnx")
        if config.get("command") == "extract" and (mask.get("options") or {}).get("train_weights"):
            raise NetsiftError(f"{run_dir} has no compact subnetwork: its weights were trained (train_weights), which "
                               "no seed regenerates; export it as safetensors or onnx")
        raise NetsiftError(f"{run_dir} has no subnet.json: only runs made by `netsift extract` export as compact "
                           f"(use --format safetensors or onnx)")
    return load_checkpoint(run_dir / "subnet", "subnet", SUBNET_FILE)


def _run_info(run_dir: Path, meta: dict) -> dict:
    """What a compact file records about the run besides the network: method, data, accuracy, split seed."""
    saved = rundir.read_run(run_dir)
    data = meta.get("data", saved.config.get("data"))
    info = {"method": meta.get("method", saved.config.get("method")),
            "data": data.get("data") if isinstance(data, dict) else data,
            "test_acc": meta.get("test_acc", saved.test_acc), "seed": saved.data_seed}
    if saved.data is not None:
        info["data_config"] = {k: v for k, v in {**saved.data, "data_dir": None, "download": False}.items()
                               if k in DATA_CONFIG_KEYS}
    info.update({k: meta[k] for k in ("input_shape", "num_classes", "dense_bytes") if meta.get(k) is not None})
    return info


DATA_CONFIG_KEYS = rundir.DATA_KEYS
"""The data settings a compact file keeps (how to load the data again; paths left out)."""


def write_compact(run_dir: str | Path, path: str | Path, model: nn.Module | None = None) -> dict:
    """Write the subnetwork of run folder ``run_dir`` as a compact file at ``path`` (atomically).

    Returns:
        sizes: ``compact_bytes``, ``dense_bytes`` (float32 safetensors of the baked network), ``ratio``,
        ``codec``, ``density`` and ``path``.
    """
    return write_subnet(read_run_subnet(run_dir, model), path, model)


def write_subnet(subnet: CompactSubnet, path: str | Path, model: nn.Module | None = None) -> dict:
    """Write ``subnet`` as a compact file at ``path`` (atomically); its sizes (see :func:`write_compact`)."""
    data = to_bytes(subnet)
    atomic_write_bytes(path, data)
    return sizes(subnet, data, path, model)


def sizes(subnet: CompactSubnet, data: bytes, path: str | Path | None = None, model: nn.Module | None = None) -> dict:
    """Compact size vs the float32 safetensors size of the rebuilt network."""
    dense = subnet.info.get("dense_bytes")
    if dense is None:
        dense = dense_bytes(rebuild(subnet, model=copy.deepcopy(model) if model is not None else None))
    return {"path": str(path) if path else None, "compact_bytes": len(data), "dense_bytes": dense,
            "ratio": dense / len(data), "header_bytes": _PREFIX.unpack_from(data)[2],
            "codec": header_of(data)["codec"], "density": subnet.density}


def header_of(data: bytes) -> dict:
    """The JSON header of compact-format bytes, unchecked (for inspection; :func:`from_bytes` verifies)."""
    head_len = _PREFIX.unpack_from(data)[2]
    return json.loads(data[_PREFIX.size:_PREFIX.size + head_len])
