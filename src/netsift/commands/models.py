"""``netsift models``: list the model zoo."""

from __future__ import annotations

from ..models import REGISTRY, model_names


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(run=run)


def run(args) -> int:
    for name in model_names():
        print(f"{name:<12} {REGISTRY[name].description}")
    print(f"{'tv:<name>':<12} any torchvision classification model (random init; --pretrained where online)")
    return 0
