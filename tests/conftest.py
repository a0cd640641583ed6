"""Shared fixtures: every test runs hermetically (no network, data from scikit-learn or made by the test)."""

import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("NETSIFT_PROGRESS", "off")  # tests that check progress output turn it on themselves
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture()
def run_cli(capsys):
    """Run ``netsift ...`` in-process; returns (exit code, stdout, stderr)."""
    from netsift.cli import main

    def run(*argv: str):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``):
    far faster than two on a busy 2-core machine, and deterministic."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
