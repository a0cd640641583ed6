"""How settled are gumbel masks after the CPU budget? Fraction of σ(m̂) still in (0.1, 0.9), by mask lr.

    PYTHONPATH=src .venv/bin/python benchmarks/masks_settle.py    # writes benchmarks/results/masks_settle.json
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from netsift.config import DataConfig, TrainConfig
from netsift.data import load_bundle
from netsift.masks import apply_masks, extract, fit_masks, mask_params
from netsift.masks.frozen import frozen_network
from netsift.measure import measure
from netsift.models import model_manifest


def main() -> None:
    torch.set_num_threads(1)
    bundle = load_bundle(DataConfig("fashion-mnist", train_subset=20000), 0)
    manifest = model_manifest("lenet300", 1.0, bundle.input_shape, bundle.num_classes)
    rows = []
    for lr in (50.0, 500.0, 2000.0, 5000.0):
        masked = apply_masks(frozen_network(manifest, "signed-constant", 0), "gumbel")
        fit_masks(masked, bundle, TrainConfig(epochs=10, batch_size=128, lr=lr), seed=0)
        logits = torch.cat([q.detach().reshape(-1) for q in mask_params(masked)])
        p = torch.sigmoid(logits)
        rows.append({"mask_lr": lr, "undecided": float(((p > 0.1) & (p < 0.9)).float().mean()),
                     "density": float((logits >= 0).float().mean()),
                     "test_acc": measure(extract(masked), bundle)["test_acc"]})
        print(rows[-1], flush=True)
    Path("benchmarks/results/masks_settle.json").write_text(json.dumps(
        {"model": "lenet300", "data": "fashion-mnist", "train_subset": 20000, "epochs": 10, "seed": 0,
         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
