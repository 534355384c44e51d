"""Suite-wide settings: offline, single-threaded, quiet."""

import os

# Nothing in the suite may download: a test that needs a hub model must use a local fixture instead.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models run faster on one thread than on two competing ones (2-core CI machine).
torch.set_num_threads(1)
