"""The one result schema: what ``netsift.train/extract/prune`` return and what ``result.json`` holds.

Every command writes the same keys (``None`` where a key does not apply), flat where a table wants them,
so ``pandas.json_normalize`` or ``netsift report`` tabulates any set of runs without glue. The field list
below is the documentation of ``result.json`` (docs/results.md is generated from it and checked by a test).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from torch import nn


def _f(help: str, default: Any = None, returned: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "returned": returned})


@dataclass
class Result:
    """A finished run: the network (``.model``, a plain ``nn.Module``) and every field of ``result.json``.

    ``result.json`` stores the architecture's name under ``"model"``; on this object it is :attr:`arch`, and
    :attr:`model` is the network itself. ``result["test_acc"]`` works as well as ``result.test_acc``.
    """

    model: nn.Module | None = field(default=None, repr=False, metadata={"help": "the network (not in result.json)"})
    compact: Any = field(default=None, repr=False, metadata={
        "help": "extract: the subnetwork as a compact file holds it, for `netsift.export` (not in result.json)"})
    # --- what ran
    command: str = _f("`train`, `extract` or `prune` (`evaluate` and `export` in what those return)", "")
    method: str = _f("`dense` (train), the mask method (extract) or the selection method (prune)", "")
    arch: str = _f("architecture: a zoo name, `tv:<name>`, or `custom:<class>` for your own module (JSON key: "
                   "`model`)", "")
    width: float | None = _f("width multiplier of a zoo architecture")
    data: str = _f("data set name (`custom` for your own data)", "")
    image_size: int | None = _f("side (px) of the square images fed to the network (after any `--image-size` "
                                "resize; `null` for other inputs)")
    input_shape: list | None = _f("shape of one input sample as the network takes it, e.g. `[1, 28, 28]`")
    structure: str | None = _f("structure hash of the network (SHA-256 of its parameter and buffer names, shapes "
                               "and dtypes; `netsift report` keys its series by it, shown short)")
    seed: int = _f("seed of the initialisation, sampling, selection and training", 0)
    data_seed: int = _f("seed of the train/validation split", 0)
    # --- the network
    test_acc: float | None = _f("accuracy on the whole test split (fraction 0-1)")
    val_acc: float | None = _f("accuracy on the validation split (fraction 0-1; `null` without one)")
    test_loss: float | None = _f("mean cross-entropy on the test split")
    test_samples: int | None = _f("test images `test_acc` was computed on (the whole test split, each once, with any "
                                  "number of processes)")
    density: float = _f("kept fraction of the prunable (Linear/Conv2d) weights, relative to the source network", 1.0)
    params: int = _f("non-zero parameters", 0)
    params_total: int = _f("all parameters", 0)
    macs: int = _f("multiply-accumulates per sample of the network as it runs (torch.utils.flop_counter)", 0)
    macs_sparse: int = _f("MACs if zero weights were skipped (each layer's MACs times its weight density)", 0)
    macs_fraction: float = _f("`macs` / the source network's MACs (1 for train and extract)", 1.0)
    layers: list = field(default_factory=list, metadata={
        "help": "per Linear/Conv2d layer: `name`, `shape`, `density` (and `scale` for masks)"})
    # --- latency (one protocol: measure.compare_latency, the network and its source interleaved)
    latency_b1_ms: float | None = _f("CPU forward latency at batch 1 (ms): the fastest of the interleaved timing rounds")
    latency_b64_ms: float | None = _f("CPU forward latency at batch 64 (ms): the fastest of the interleaved timing rounds")
    latency_threads: int | None = _f("CPU threads of the latency measurement")
    latency_spread: float | None = _f("largest (max - min) / median over the timing rounds")
    latency_note: str | None = _f("a warning when the spread exceeds 10%")
    source_latency_b1_ms: float | None = _f("prune: the source network's latency at batch 1, timed interleaved")
    source_latency_b64_ms: float | None = _f("prune: the source network's latency at batch 64, timed interleaved")
    speedup_b1: float | None = _f("prune: source latency / pruned latency at batch 1")
    speedup_b64: float | None = _f("prune: source latency / pruned latency at batch 64")
    # --- training
    epochs_run: int | None = _f("epochs trained (train, extract; prune: fine-tune epochs)")
    best_epoch: int | None = _f("epoch of the best validation accuracy, whose weights are kept")
    stopped_early: bool | None = _f("whether the patience ended the run")
    train_images_per_s: float | None = _f("training throughput over the run")
    wall_s: float = _f("wall time of the whole command (s)", 0.0)
    # --- extract
    init: str | None = _f("extract: frozen weight init (`signed-constant`, `kaiming-normal`)")
    rescale: str | None = _f("extract: layer scale (`none`, `smart`, `dynamic`)")
    density_target: float | None = _f("extract: requested density (`null`: emergent)")
    mask_lr: float | None = _f("extract: learning rate of the mask logits/scores that was used")
    mask_weight_decay: float | None = _f("extract: weight decay of the mask logits/scores that was used")
    mask_schedule: str | None = _f("extract: learning-rate schedule of the masks that was used")
    recalibrated_bn: int | None = _f("extract/prune: batch-norm statistics re-estimated on this many minibatches")
    weights_sha256: str | None = _f("extract: SHA-256 of the frozen weights (what a compact file regenerates)")
    subnet: str | None = _f("extract: the mask file in the run folder (`subnet.safetensors`)")
    weights: dict | None = _f("the `--weights` file the network started from: `file` (name), `sha256`, `adapted` "
                              "(one line per adaptation: classifier, stem, position embedding); `null` without one")
    # --- prune
    source: str | None = _f("prune: the run folder of the source network (`null` for an in-memory module)")
    macs_target: float | None = _f("prune: requested MACs fraction (`null`: another budget, or stopped by the "
                                   "tolerance)")
    params_target: float | None = _f("prune: requested fraction of the parameters (`--params`)")
    params_fraction: float | None = _f("prune: `params_total` / the source network's")
    budget_missed: str | None = _f("prune: why the network is off its `--macs`/`--params` budget by more than 1% "
                                   "(also a warning line); `null` when met or without such a budget")
    latency_target: float | None = _f("prune: requested fraction of the latency (`--latency`)")
    latency_budget: dict | None = _f("prune with `--latency`: `target`, `measured` (the pruned architecture timed "
                                     "against the source, interleaved), every try's `asked`/`predicted`/`measured`, "
                                     "the per-group latency `table` (ms at each width), `batch_size`, `threads`")
    widths: str | None = _f("prune: `uniform` (every group keeps the same fraction of its channels) or `learned` "
                            "(the method's own allocation of the budget); the widths are `groups[].kept`")
    tolerance: float | None = _f("prune: accuracy tolerance per layer (`null` with a MACs target)")
    source_test_acc: float | None = _f("prune: the source network's test accuracy")
    source_macs: int | None = _f("prune: the source network's MACs")
    source_params: int | None = _f("prune: the source network's parameters")
    source_structure: str | None = _f("prune: structure hash of the source network (the series key of a prune)")
    test_acc_selected: float | None = _f("prune: test accuracy after removal, before any fine-tuning")
    finetuned: bool | None = _f("prune: whether the network was fine-tuned (`test_acc` is then after fine-tuning)")
    finetune_epochs: int | None = _f("prune: fine-tune epochs")
    selection_s: float | None = _f("prune: wall time of the channel selection (s)")
    selection_estimate_s: float | None = _f("prune, gfs/backward: the selection's time estimated before it started "
                                            "(s; from the MACs of the suffix passes and this machine's measured "
                                            "speed; an upper bound in tolerance mode)")
    selection_passes: int | None = _f("prune, gfs/backward: suffix passes (candidates x steps) estimated before "
                                      "the selection started")
    removal_error: float | None = _f("prune: the largest difference between the pruned network's outputs and those "
                                     "of the masked subnetwork its selection scored, over the largest output, on "
                                     "up to 16 held-out images (float rounding: about 1e-6; netsift warns above "
                                     "1e-3: a layer that computes differently on fewer channels, or channel groups "
                                     "that do not fit the network; `null`: outputs the same for every input, "
                                     "nothing to compare)")
    finetune_s: float | None = _f("prune: wall time of the fine-tuning (s)")
    groups: list | None = _f("prune: per channel group: `group`, `size`, `kept` (and accuracies in tolerance mode)")
    groups_skipped: list | None = _f("prune: every channel group kept whole (not pruned), with why: `layers` (the "
                                     "layers whose output channels stay, root first), `channels`, `reason`; the "
                                     "logits layer is never pruned and not listed")
    # --- evaluate and export (returned by netsift.evaluate / netsift.export; never in a run's result.json)
    saved_test_acc: float | None = _f("evaluate: the test accuracy the run (or compact file) recorded", returned=True)
    format: str | None = _f("export: `compact`, `safetensors` or `onnx`", returned=True)
    path: str | None = _f("export: the file written", returned=True)
    bytes: int | None = _f("export: its size in bytes", returned=True)
    dense_bytes: int | None = _f("export: the size of the network's float32 safetensors state", returned=True)
    ratio: float | None = _f("export (compact): `dense_bytes` / `bytes`", returned=True)
    codec: str | None = _f("export (compact): the payload's compression", returned=True)
    # --- where and with what
    run_dir: str | None = _f("the run folder (`null` for an in-memory run)")
    netsift_version: str = _f("netsift version", "")
    torch_version: str = _f("PyTorch version", "")
    machine: str = _f("CPU architecture", "")
    threads: int = _f("torch intra-op threads (same seed gives the same bits only with the same thread count)", 0)
    cpu_capability: str = _f("ATen's CPU kernel set (e.g. AVX512, AVX2): same seed, same bits only on the same one", "")
    processes: int = _f("processes of the job (`torchrun`/`accelerate launch`; 1 without a launcher)", 1)

    def to_dict(self) -> dict:
        """The ``result.json`` contents (``arch`` under ``"model"``; the network itself is left out)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("model", "compact") or (f.metadata.get("returned") and value is None):
                continue
            out["model" if f.name == "arch" else f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict, model: nn.Module | None = None) -> "Result":
        """A result read back from ``result.json`` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {("arch" if k == "model" else k): v for k, v in data.items()}
        return cls(model=model, **{k: v for k, v in values.items() if k in names and k not in ("model", "compact")})

    def __getitem__(self, key: str) -> Any:
        return getattr(self, "arch" if key == "model" else key)

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()

    def json(self) -> str:
        """``result.json`` as a string."""
        return json.dumps(self.to_dict(), indent=2)


RESULT_KEYS = tuple(Result().to_dict())
"""Every key of ``result.json``, in order."""


def schema_markdown() -> str:
    """The ``result.json`` fields as a markdown table (docs/results.md)."""
    rows = ["| key | meaning |", "|---|---|"]
    for f in dataclasses.fields(Result):
        if f.name in ("model", "compact") or f.metadata.get("returned"):
            continue
        rows.append(f"| `{'model' if f.name == 'arch' else f.name}` | {f.metadata['help']} |")
    return "\n".join(rows)
