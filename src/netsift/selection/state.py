"""The resume state of a channel selection: ``selection.safetensors`` + ``selection.json`` in the run folder.

Written after every finished channel group (by the process that writes the run folder), read by
``netsift prune --resume`` to skip the finished groups and continue exactly where the selection stopped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ..rundir import artifact
from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import NetsiftError
from ..schema import SELECTION_STATE
from .base import GroupRecord


class SelectionState:
    """``selection.safetensors`` + ``selection.json``: the channel groups finished so far, saved after each one.

    With them, ``--resume`` skips the finished groups and continues the selection exactly where it stopped: the
    state after the last finished group (the candidate generator, the global RNG, the minibatch stream and, with
    a per-layer fine-tune, the network's weights) is restored before the next group starts.
    """

    STEM = "selection"

    def __init__(self, run_dir: Path | None, method: str, stream, keep_model: bool):
        self.run_dir, self.method, self.stream, self.keep_model = run_dir, method, stream, keep_model
        self.tensors: dict[str, torch.Tensor] = {}
        self.meta: dict = {}
        self.widths: list[int] | None = None  # the widths the interrupted selection kept to (learned ones)

    def hooks(self, plan, net: nn.Module) -> dict:
        """``on_group_done`` / ``on_resume`` for :func:`~netsift.selection.pruner.prune_channels`."""
        return {"on_group_done": lambda ctx, gi: self.save(ctx, plan, net), "on_resume": self.restore}

    def save(self, ctx, plan, net: nn.Module) -> None:
        if not distributed.is_main():
            return
        groups = [{"group": plan.groups[gi].name, "kept": r.kept, "rescale": r.rescale, "info": r.info}
                  for gi, r in sorted(ctx.records.items())]
        tensors = {"generator": ctx.generator.get_state(), "rng.torch": torch.get_rng_state()}
        if self.keep_model:
            tensors.update({f"model.{k}": v for k, v in net.state_dict().items()})
        meta = {"method": self.method, "groups": groups, "stream": self.stream.state(), "model_state": self.keep_model,
                "widths": ctx.widths}
        save_checkpoint(artifact(self.run_dir, "selection"), tensors, meta)

    def load(self, plan, net: nn.Module) -> dict:
        """The groups a resumed run finished (by index); the network gets their weights back when they changed."""
        if not (self.run_dir / f"{self.STEM}.json").is_file():
            return {}
        self.tensors, self.meta = load_checkpoint(self.run_dir / self.STEM, "selection state", SELECTION_STATE)
        where = self.run_dir / f"{self.STEM}.json"
        names = [g.name for g in plan.groups]
        saved = self.meta["groups"]
        if self.meta["method"] != self.method or len(saved) > len(names) or \
                [g["group"] for g in saved] != names[:len(saved)]:
            raise NetsiftError(f"{where} belongs to another selection (method or channel groups differ)")
        if "generator" not in self.tensors or "rng.torch" not in self.tensors:
            raise NetsiftError(f"{where}: its tensors lack the random generator states")
        done = {}
        for gi, g in enumerate(saved):
            size = plan.groups[gi].size
            if not g["kept"] or any(i >= size for i in g["kept"]):
                raise NetsiftError(f"{where}: group {g['group']} keeps channels outside its {size}")
            done[gi] = GroupRecord(g["kept"], g["rescale"], g["info"])
        if self.meta["model_state"] != self.keep_model:
            raise NetsiftError(f"{where} was saved with another --layer-finetune setting")
        widths = self.meta.get("widths")
        if widths is not None and (len(widths) != len(names) or any(
                not 1 <= w <= g.size for w, g in zip(widths, plan.groups))):
            raise NetsiftError(f"{where}: its widths do not fit the network's channel groups")
        self.widths = widths
        if self.keep_model:
            state = {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise NetsiftError(f"{where}: its weights do not fit the network: {str(e).splitlines()[0]}") from None
        return done

    def restore(self, ctx) -> None:
        """Continue from the state saved after the last finished group."""
        try:
            ctx.generator.set_state(self.tensors["generator"])
            torch.set_rng_state(self.tensors["rng.torch"])
        except (RuntimeError, TypeError, ValueError) as e:
            raise NetsiftError(f"selection state in {self.run_dir} is corrupt: {e}") from None
        self.stream.restore(self.meta["stream"])

