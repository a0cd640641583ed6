import json

import pytest
import torch

from netsift.config import TrainConfig
from netsift.data import load_data
from netsift.errors import NetsiftError
from netsift.models import build_model
from netsift.training import Callback, fit, lr_factor


def _lenet(bundle, seed=0):
    torch.manual_seed(seed)
    return build_model("lenet300", bundle.in_channels, bundle.image_size, bundle.num_classes)


def test_lenet300_learns_digits():
    bundle = load_data("digits")
    model = _lenet(bundle)
    result = fit(model, bundle, TrainConfig(epochs=5, batch_size=64, lr=0.05))
    from netsift.measure import evaluate
    from netsift.data import make_loader

    assert evaluate(model, make_loader(bundle, "test", 512))["acc"] >= 0.9
    assert result.best_epoch >= 1 and len(result.history) == 5


class _Interrupt(Callback):
    def __init__(self, at):
        self.at = at

    def on_epoch_start(self, epoch):
        if epoch == self.at:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path):
    bundle = load_data("digits")
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.05, augment=True)
    full = _lenet(bundle)
    fit(full, bundle, cfg, tmp_path / "full", seed=3)

    (tmp_path / "cut").mkdir()
    cut = _lenet(bundle)
    with pytest.raises(KeyboardInterrupt):
        fit(cut, bundle, cfg, tmp_path / "cut", seed=3, callbacks=[_Interrupt(2)])
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 2
    torch.manual_seed(999)  # disturb the global RNG: resume must restore it
    resumed = _lenet(bundle, seed=5)  # different init: resume must restore the weights too
    fit(resumed, bundle, cfg, tmp_path / "cut", seed=3, resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    full_rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in rows] == [r["val_acc"] for r in full_rows]


def test_early_stopping_and_best_checkpoint(tmp_path):
    bundle = load_data("digits")

    class Worsen(Callback):  # report a falling validation accuracy after epoch 1
        def on_epoch_end(self, epoch, metrics):
            metrics["val_acc"] = 1.0 - 0.1 * epoch

    model = _lenet(bundle)
    result = fit(model, bundle, TrainConfig(epochs=10, patience=2, batch_size=128), tmp_path, callbacks=[Worsen()])
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_nan_loss_is_a_clear_error(tmp_path):
    bundle = load_data("digits")
    model = _lenet(bundle)
    with pytest.raises(NetsiftError, match="loss became"):
        fit(model, bundle, TrainConfig(epochs=3, lr=1e6, momentum=0.0, weight_decay=0.0), tmp_path)


def test_schedules():
    cfg = TrainConfig(epochs=4)
    assert lr_factor("cosine", 0, 100, 25, cfg) == 1.0 and lr_factor("cosine", 100, 100, 25, cfg) < 1e-9
    assert lr_factor("step", 49, 100, 25, cfg) == 1.0 and lr_factor("step", 50, 100, 25, cfg) == pytest.approx(0.1)
    assert lr_factor("step", 75, 100, 25, cfg) == pytest.approx(0.01)


def test_separate_optimizer_groups_train_only_their_parameters():
    from netsift.training import OptimGroup

    bundle = load_data("digits")
    model = _lenet(bundle)
    first = model[1].weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, bundle, TrainConfig(epochs=1, max_steps=3), groups=[OptimGroup("first", [first], lr=0.1)])
    after = model.state_dict()
    assert not torch.equal(before["1.weight"], after["1.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if k != "1.weight")
