"""Wall-clock inference per image: SOHO's grid pipeline vs a bottom-up-attention region pipeline, one run.

The SOHO paper (Sec. 1 / 4) claims about 10x faster inference than region-based VLP models, whose visual
features come from the bottom-up-attention detector (Anderson et al. 2018: Faster R-CNN ResNet-101 **C4**
trained on Visual Genome's 1,600 object classes). Both pipelines are built here from library parts with
random weights (no download) and timed on the same 600x1000 image, followed by the same BERT-base and VQA head:

* **SOHO**: ``SOHOSpec(preset="soho_r101").build(tokenizer)`` -- ResNet-101 to C5, 2x2 max-pool, 1x1 conv + BN, visual dictionary,
  2-D sine position, LN (~10x16 grid tokens) -> BERT-base over 16 text + grid tokens -> VQA head.
* **Region pipeline** (torchvision parts, settings of bottom-up-attention's test config): ResNet-101 conv1-res4
  (stride 16) -> RPN (12 anchors, 6,000 pre-NMS, NMS 0.7, ``--proposals`` kept) -> RoIPool 14x14 -> res5
  (torchvision's ``layer4``) on **each** box -> average pool -> 1,601-way classifier and class-specific box
  regression -> per-class NMS (0.3) over the 1,600 object classes -> boxes with max confidence >= 0.2, 10 to
  100 of them -> their 2,048-d features + box geometry projected to 768 -> the same BERT-base -> VQA head.

``--proposals`` defaults to 100 boxes into the res5 head (the issue's setting); bottom-up-attention's own
test config keeps 300 RPN proposals, which makes the region pipeline slower still. Times are medians over
``--repeats`` runs after one warm-up, in one process, so the printed ratio is measured in one run. Use one
thread for a quiet comparison: ``OMP_NUM_THREADS=1 python benchmarks/soho.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.ops import RoIPool, batched_nms, clip_boxes_to_image

from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR, load_tokenizer
from vislang.singlestream.model import VisualTokens
from vislang.soho.model import SOHOSpec

H, W, TEXT, CLASSES = 600, 1000, 16, 1601  # 1,600 VG object classes + background


class RegionPipeline(nn.Module):
    """Bottom-up-attention-style feature extraction (Faster R-CNN R101-C4, VG classes) from torchvision parts."""

    def __init__(self, proposals: int, hidden: int = 768) -> None:
        super().__init__()
        r101 = torchvision.models.resnet101()
        self.c4 = nn.Sequential(r101.conv1, r101.bn1, r101.relu, r101.maxpool, r101.layer1, r101.layer2, r101.layer3)
        anchors = AnchorGenerator(sizes=((64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))  # 4 x 3 = 12
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(1024, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n={"training": 12000, "testing": 6000},
            post_nms_top_n={"training": 2000, "testing": proposals},
            nms_thresh=0.7,
        )
        self.roi_pool = RoIPool((14, 14), spatial_scale=1 / 16)
        self.res5 = r101.layer4  # the C4 detector's box head: res5 on every RoI
        self.cls_score = nn.Linear(2048, CLASSES)
        self.bbox_pred = nn.Linear(2048, CLASSES * 4)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        # With random weights the box regressions are huge and every box degenerates; zero regressors keep the
        # proposals at their anchors and the class boxes at their proposals (the same operations are timed).
        for layer in (self.rpn.head.bbox_pred, self.bbox_pred):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.region_proj = nn.Linear(2048, hidden)  # region feature + box geometry -> BERT width (UNITER/LXMERT)
        self.box_proj = nn.Linear(5, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.times: dict[str, list[float]] = {}

    def _timed(self, name: str, fn: Callable[[], object]) -> object:
        start = time.perf_counter()
        out = fn()
        self.times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def forward(self, image: Tensor) -> VisualTokens:
        h, w = image.shape[-2:]
        c4 = self._timed("backbone C4", lambda: self.c4(image))
        boxes = self._timed("RPN + NMS", lambda: self.rpn(ImageList(image, [(h, w)]), {"0": c4})[0][0])
        pooled = self._timed("res5 head per box", lambda: self.res5(self.roi_pool(c4, [boxes])).mean((2, 3)))
        keep = self._timed("per-class NMS", lambda: self.select(boxes, pooled, (h, w)))
        return self._timed("region tokens", lambda: self.tokens(boxes[keep], pooled[keep], (h, w)))

    def select(self, boxes: Tensor, features: Tensor, size: tuple[int, int]) -> Tensor:
        """bottom-up-attention's ``generate_tsv``: per-class NMS (0.3) over the 1,600 object classes, each box's
        best surviving class confidence, boxes with confidence >= 0.2 (at least 10, at most 100)."""
        scores = self.cls_score(features).softmax(-1)[:, 1:]  # (R, 1600)
        deltas = self.bbox_pred(features).view(len(boxes), CLASSES, 4)[:, 1:]
        class_boxes = self.box_coder.decode_single(deltas.reshape(-1, 4), boxes.repeat_interleave(CLASSES - 1, 0))
        class_boxes = clip_boxes_to_image(class_boxes, size)
        labels = torch.arange(CLASSES - 1).repeat(len(boxes))
        kept = batched_nms(class_boxes, scores.reshape(-1), labels, 0.3)
        max_conf = torch.zeros(len(boxes)).scatter_reduce_(0, kept // (CLASSES - 1), scores.reshape(-1)[kept], "amax")
        order = max_conf.argsort(descending=True)
        count = int((max_conf >= 0.2).sum().clamp(10, 100))
        return order[:count]

    def tokens(self, boxes: Tensor, features: Tensor, size: tuple[int, int]) -> VisualTokens:
        h, w = size
        geometry = torch.stack(
            [
                boxes[:, 0] / w,
                boxes[:, 1] / h,
                boxes[:, 2] / w,
                boxes[:, 3] / h,
                (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (h * w),
            ],
            dim=1,
        )
        x = self.norm(self.region_proj(features) + self.box_proj(geometry))[None]
        return VisualTokens(x, torch.ones(x.shape[:2], dtype=torch.bool))


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--proposals", type=int, default=100, help="RPN boxes into the res5 head (bottom-up: 300)")
    args = parser.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    soho = SOHOSpec(preset="soho_r101").build(tok, 3129).eval()
    regions = RegionPipeline(args.proposals).eval()
    image = torch.randn(1, 3, H, W)
    ids = torch.randint(5, len(tok), (1, TEXT))
    text_mask = torch.ones(1, TEXT, dtype=torch.bool)
    shapes: dict[str, int] = {}

    def soho_run() -> Tensor:
        hidden, visual = soho(ids, text_mask, image)
        shapes["soho"] = visual.tokens.shape[1]
        return soho.vqa_head(hidden[:, 0])

    def region_run() -> Tensor:
        visual = regions(image)
        shapes["regions"] = visual.tokens.shape[1]
        return soho.vqa_head(soho.fuse(ids, text_mask, visual)[:, 0])

    with torch.inference_mode():
        t_soho = median_time(soho_run, args.repeats)
        t_region = median_time(region_run, args.repeats)
    print(
        f"image {H}x{W}, {TEXT} text tokens, torch threads {torch.get_num_threads()}, median of {args.repeats} "
        f"runs after a warm-up; random weights"
    )
    print(f"SOHO grid (R101 C5 + BERT-base, {shapes['soho']} visual tokens): {t_soho:8.2f} s / image")
    print(
        f"region pipeline (R101-C4 detector, res5 on {args.proposals} boxes, NMS over 1,600 classes, "
        f"{shapes['regions']} regions + BERT-base): {t_region:8.2f} s / image"
    )
    for name, values in regions.times.items():
        print(f"    {name:<20}{statistics.median(values[1:]):8.2f} s")
    print(f"region / SOHO wall-clock ratio: {t_region / t_soho:.2f}x (paper: ~10x)")


if __name__ == "__main__":
    main()
