import json

import pytest

from netsift.results import RESULT_KEYS as RESULT_FIELDS

QUICK = ["--data", "digits", "--epochs", "2", "--batch-size", "64"]


def test_train_writes_full_result_and_eval_reproduces_it(run_cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli("train", "--model", "lenet300", *QUICK, "--out", out)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    for field in RESULT_FIELDS:
        assert field in result, field
    assert result["command"] == "train" and result["method"] == "dense" and result["density"] == 1.0
    assert 0.0 <= result["test_acc"] <= 1.0 and result["macs"] == 784 * 0 + 64 * 300 + 300 * 100 + 100 * 10
    assert result["params_total"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert [layer["shape"] for layer in result["layers"]] == [[300, 64], [100, 300], [10, 100]]
    code, stdout, err = run_cli("eval", out)
    assert code == 0, err
    assert f"{result['test_acc']:.4f}" in stdout


def test_list_commands(run_cli):
    code, out, _ = run_cli("models")
    assert code == 0 and "resnet20" in out and "tv:<name>" in out
    code, out, _ = run_cli("datasets")
    assert code == 0 and "fashion-mnist" in out


@pytest.mark.parametrize("argv, needle", [
    (["train", "--model", "nope"], "unknown model 'nope'"),
    (["train", "--data", "nope"], "unknown data set 'nope'"),
    (["train", "--optimizer", "rmsprop"], "invalid choice"),
    (["train", "--epochs", "0"], "--epochs must be positive"),
    (["train", "--width", "-1"], "--width must be in (0, 64]"),
    (["train", "--width", "nan"], "--width must be a finite number"),
    (["train", "--momentum", "-1"], "--momentum must be in [0, 1)"),
    (["train", "--model", "tv:squeezenet1_0", "--data", "digits"], "cannot take inputs"),
    (["train", "--lr", "abc"], "invalid float value"),
    (["eval", "/nonexistent/run"], "no such run"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_nonzero(run_cli, tmp_path, argv, needle):
    code, out, err = run_cli(*argv, *(["--out", tmp_path / "o"] if argv[0] == "train" else []))
    assert code != 0
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_existing_out_is_not_overwritten(run_cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, _, err = run_cli("train", *QUICK, "--out", out)
    assert code == 2 and "not empty" in err
    assert (out / "precious.txt").read_text() == "keep me"
    code, _, err = run_cli("train", *QUICK, "--out", out, "--overwrite")  # not a netsift run: needs --force
    assert code == 2 and "not a netsift run ('precious.txt')" in err and "--force" in err
    assert (out / "precious.txt").read_text() == "keep me"
    code, _, err = run_cli("train", *QUICK, "--out", out, "--overwrite", "--force")
    assert code == 0 and not (out / "precious.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it
    code, _, err = run_cli("train", *QUICK, "--out", out, "--overwrite")  # a netsift run: replaced
    assert code == 0, err


def test_corrupt_or_missing_checkpoint(run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", *QUICK, "--out", out)[0] == 0
    original = (out / "result.json").read_text()
    blob = bytearray((out / "model.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(blob))
    code, _, err = run_cli("eval", out)
    assert code == 2 and "corrupt" in err
    (out / "model.safetensors").unlink()
    code, _, err = run_cli("eval", out)
    assert code == 2 and "not found" in err
    (out / "checkpoint.json").write_text("{not json")
    code, _, err = run_cli("train", *QUICK, "--out", out, "--resume")
    assert code == 2 and "corrupt" in err
    assert (out / "result.json").read_text() == original


def test_resume_refuses_changed_settings(run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", *QUICK, "--out", out)[0] == 0
    code, _, err = run_cli("train", *QUICK, "--lr", "0.2", "--out", out, "--resume")
    assert code == 2 and "train.lr" in err
    code, _, err = run_cli("train", *QUICK, "--out", tmp_path / "none", "--resume")
    assert code == 2 and "no run to resume" in err


def test_cli_resume_continues_to_more_epochs(run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", *QUICK, "--out", out)[0] == 0
    args = [a if a != "2" else "3" for a in QUICK]
    code, _, err = run_cli("train", *args, "--out", out, "--resume")
    assert code == 0, err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.needs_data
@pytest.mark.slow
def test_conv4_on_real_fashion_mnist(run_cli, tmp_path):
    import os

    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("dataset-fashion-mnist is not installed")
    code, _, err = run_cli("train", "--model", "conv4", "--data", "fashion-mnist", "--epochs", "2", "--width", "0.25",
                           "--train-subset", "3000", "--optimizer", "adam", "--lr", "0.002", "--out", tmp_path / "fm")
    assert code == 0, err
    result = json.loads((tmp_path / "fm" / "result.json").read_text())
    assert result["test_acc"] > 0.5 and result["data"] == "fashion-mnist"
