"""Worker of test_metrics_ddp.py: one rank of a 2-process gloo evaluation over 101 samples.

Run as ``python ddp_metrics_worker.py RANK WORLD_SIZE PORT OUT_JSON``; ``evaluate(None)`` is the
single-process reference. Half of the metrics read their shard through the un-padded evaluation sampler,
the other half through torch's padded ``DistributedSampler`` (exactness then comes from index dedup).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from vislang.shared.metrics import (
    CaptionMetric,
    NLVR2Metric,
    RetrievalMetric,
    SegmentationIoU,
    SNLIVEAccuracy,
    TopKAccuracy,
    VQAAccuracy,
    evaluation_sampler,
)

N = 101
WORDS = ["red", "Red", "two", "2", "the dog", "dog", "yes", "no", "t-shirt", "t shirt"]


def make_data() -> dict:
    g = torch.Generator().manual_seed(0)
    pick = lambda k: int(torch.randint(0, k, (1,), generator=g))  # noqa: E731
    videos = torch.nn.functional.normalize(torch.randn(N // 2 + 1, 8, generator=g), dim=-1)
    data = {
        "answers": [[WORDS[pick(len(WORDS))] for _ in range(10)] for _ in range(N)],
        "vqa_pred": [WORDS[pick(len(WORDS))] for _ in range(N)],
        "answer_type": [["yes/no", "number", "other"][pick(3)] for _ in range(N)],
        "question_type": [["what", "how many", "is the", "are"][pick(4)] for _ in range(N)],
        "text_key": torch.arange(N) // 2,
        "visual": videos[torch.arange(N) // 2],
        "text": torch.nn.functional.normalize(
            videos[torch.arange(N) // 2] + 0.7 * torch.randn(N, 8, generator=g), dim=-1
        ),
        "seg_pred": [torch.randn(pick(4), 6, 6, generator=g) * 2 for _ in range(N)],
        "seg_gt": [(torch.rand(1 + pick(3), 6, 6, generator=g) > 0.5).float() for _ in range(N)],
        "cls_scores": torch.randn(N, 3, 10, generator=g),
        "cls_target": torch.randint(0, 10, (N,), generator=g),
        "nlvr_id": [f"dev-{i // 4}-{i % 4}-0" for i in range(N)],
        "nlvr_pred": torch.randint(0, 2, (N,), generator=g),
        "nlvr_target": torch.randint(0, 2, (N,), generator=g),
        "ve_logits": torch.randn(N, 3, generator=g),
        "ve_target": torch.randint(0, 3, (N,), generator=g),
        "caption": [" ".join(WORDS[pick(len(WORDS))].lower() for _ in range(5)) for _ in range(N)],
        "references": [
            [" ".join(WORDS[pick(len(WORDS))].lower() for _ in range(5)) for _ in range(1 + pick(3))] for _ in range(N)
        ],
    }
    return data


def _batches(indices: list[int], size: int = 8):
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def evaluate(world: tuple[int, int] | None) -> dict[str, dict[str, float]]:
    data = make_data()
    dataset = list(range(N))
    if world is None:
        unpadded = padded = dataset
    else:
        rank, size = world
        unpadded = list(evaluation_sampler(dataset))
        padded = list(DistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=False))
        assert len(padded) * size == N + 1  # torch pads 101 -> 102: one sample is seen twice
    vqa, ret, cap = VQAAccuracy(), RetrievalMetric(block_size=16), CaptionMetric(tokenizer="none", meteor=False)
    seg, top, nlvr, ve = SegmentationIoU(), TopKAccuracy(), NLVR2Metric(), SNLIVEAccuracy()
    for b in _batches(unpadded):
        idx = torch.tensor(b)
        vqa.update(
            [data["vqa_pred"][i] for i in b],
            [data["answers"][i] for i in b],
            idx,
            [data["answer_type"][i] for i in b],
            [data["question_type"][i] for i in b],
        )
        ret.update(data["text"][idx], data["text_key"][idx], idx, data["visual"][idx], data["text_key"][idx])
        cap.update([data["caption"][i] for i in b], [data["references"][i] for i in b], idx)
    for b in _batches(padded):
        idx = torch.tensor(b)
        seg.update([data["seg_pred"][i] for i in b], [data["seg_gt"][i] for i in b], idx)
        top.update(data["cls_scores"][idx], data["cls_target"][idx], idx)
        nlvr.update(data["nlvr_pred"][idx], data["nlvr_target"][idx], [data["nlvr_id"][i] for i in b], idx)
        ve.update(data["ve_logits"][idx], data["ve_target"][idx], idx)
    metrics = {
        "vqa": vqa,
        "retrieval": ret,
        "captioning": cap,
        "segmentation": seg,
        "topk": top,
        "nlvr2": nlvr,
        "snli_ve": ve,
    }
    return {name: m.compute() for name, m in metrics.items()}


if __name__ == "__main__":
    rank, world_size, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = evaluate((rank, world_size))
    finally:
        dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(result, f)
