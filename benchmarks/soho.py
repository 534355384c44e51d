"""Per-image inference FLOPs: SOHO (ResNet-101 grid features + BERT-base) vs a region-based pipeline.

The region pipeline is torchvision's Faster R-CNN R-101-FPN at 600x1000 (FPN backbone + RPN head + the
box head on 1000 proposals, as in torchvision's test-time defaults) feeding the same BERT-base with 100
region tokens. SOHO runs its ResNet-101 on the same 600x1000 image (~160 visual tokens after the 2x2 pool).
Everything is built on the meta device (no weights, no memory) and counted with
``torch.utils.flop_counter.FlopCounterMode``; NMS, RoIAlign and box decoding are not counted (small, and
not matmul/conv work). The SOHO paper claims about 10x faster inference than region-based models.

    python benchmarks/soho.py
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator, RPNHead

from vislang.shared.singlestream.model import VisualTokens
from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR, load_tokenizer
from vislang.soho.model import build_soho

H, W, TEXT, REGIONS, PROPOSALS = 600, 1000, 16, 100, 1000


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    tok = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    with torch.device("meta"):
        soho = build_soho("soho_r101", tok, 3129).eval()
        image = torch.empty(1, 3, H, W)
        ids = torch.zeros(1, TEXT, dtype=torch.long)
        text_mask = torch.ones(1, TEXT, dtype=torch.bool)
        grid_shape = soho.encoder(image)[0].shape
        n_grid = grid_shape[2] * grid_shape[3]
        cnn = flops(lambda: soho.encoder(image))
        bert_grid = flops(
            lambda: soho.fuse(
                ids, text_mask, VisualTokens(torch.empty(1, n_grid, 768), torch.ones(1, n_grid, dtype=torch.bool))
            )
        )

        backbone = resnet_fpn_backbone(backbone_name="resnet101", weights=None).eval()
        anchors = AnchorGenerator().num_anchors_per_location()[0]
        rpn = RPNHead(256, anchors)
        box_head, predictor = TwoMLPHead(256 * 7 * 7, 1024), FastRCNNPredictor(1024, 1601)
        feats = {}
        det = flops(lambda: feats.update(backbone(image)))
        det += flops(lambda: rpn(list(feats.values())))
        det += flops(lambda: predictor(box_head(torch.empty(PROPOSALS, 256, 7, 7))))
        regions = VisualTokens(torch.empty(1, REGIONS, 768), torch.ones(1, REGIONS, dtype=torch.bool))
        bert_regions = flops(lambda: soho.fuse(ids, text_mask, regions))

    soho_total, region_total = cnn + bert_grid, det + bert_regions
    g = 1e9
    print(f"image {H}x{W}, {TEXT} text tokens; SOHO grid {grid_shape[2]}x{grid_shape[3]} = {n_grid} tokens")
    print(f"{'pipeline':<34}{'visual GFLOPs':>14}{'BERT GFLOPs':>13}{'total':>10}")
    print(f"{'SOHO (R101 grid + BERT-base)':<34}{cnn / g:>14.1f}{bert_grid / g:>13.1f}{soho_total / g:>10.1f}")
    print(
        f"{'Faster R-CNN R101-FPN + BERT-base':<34}{det / g:>14.1f}{bert_regions / g:>13.1f}{region_total / g:>10.1f}"
    )
    print(f"region-based / SOHO FLOPs ratio: {region_total / soho_total:.2f}x (paper: ~10x faster inference)")


if __name__ == "__main__":
    main()
