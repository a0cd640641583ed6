"""``netsift models``: list the model zoo (without importing torch)."""

from __future__ import annotations

from ..models import zoo_descriptions


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo", description="List the zoo's architectures.")
    p.set_defaults(run=run)


def run(args) -> int:
    for name, description in zoo_descriptions().items():
        print(f"{name:<12} {description}")
    print(f"{'tv:<name>':<12} any torchvision classification model (random init; --pretrained where online)")
    print(f"{'timm:<name>':<12} any timm classification model (random init, or a local file with --weights; "
          "needs pip install 'netsift[timm]')")
    return 0
