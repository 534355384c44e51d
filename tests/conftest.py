"""Suite-wide settings: offline, single-threaded, quiet."""

import os

# Nothing in the suite may download: a test that needs a hub model must use a local fixture instead.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models run faster on one thread than on two competing ones (2-core CI machine).
torch.set_num_threads(1)


import pytest  # noqa: E402

_LITTER = ("config.yaml", "lightning_logs", "checkpoints", "demo_outputs")


@pytest.fixture(autouse=True)
def _leaves_no_run_files_in_the_working_directory(request):
    """A CLI test without `--trainer.default_root_dir` drops config.yaml (and logs) into the caller's checkout."""
    before = {name for name in _LITTER if os.path.exists(name)}
    yield
    created = sorted(name for name in _LITTER if os.path.exists(name) and name not in before)
    if created:
        pytest.fail(f"{request.node.nodeid} left {created} in {os.getcwd()}; pass --trainer.default_root_dir=tmp_path")


@pytest.fixture
def check_exact_resume():
    """``check(config, args, tmp_path, kill)``: run a config uninterrupted, then killed with SIGKILL at
    ``kill`` (``{"step": n}`` or ``{"epoch": n}``) and resumed with ``--ckpt_path last``, and assert the
    final weights and optimiser states are bit-identical (tests/shared/exact_resume.py)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("exact_resume", Path(__file__).parent / "shared" / "exact_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check_exact_resume


@pytest.fixture(autouse=True)
def _leaves_no_process_group():
    """A CLI test of a config whose strategy is DDP (SOHO's and Pixel-BERT's: ddp_find_unused_parameters_true)
    initialises a one-process group that Lightning does not destroy; later tests must start without it."""
    before = torch.distributed.is_available() and torch.distributed.is_initialized()
    yield
    if not before and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
