"""vislang-app: a local web page to try PixelLM, VLAB, the VQA 2019 entry and CMAE (`vislang-app --help`)."""

import os

# Before Gradio is imported anywhere: no usage statistics, no version check, no hub downloads.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
