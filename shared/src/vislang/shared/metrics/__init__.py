"""Evaluation metrics that match the official evaluators, exact under DDP.

Plain functions do the computation (``vqa_accuracy``, ``retrieval_metrics``, ``caption_scores``,
``segmentation_scores``, ``topk_accuracy``, ...); torchmetrics ``Metric`` classes around them accumulate
over an epoch, sync across processes and deduplicate sampler padding by dataset index (:mod:`.ddp`).
Every score a paper reports in percent is returned in percent; ``vqa_accuracy`` is per question in [0, 1].
"""

from vislang.shared.metrics.captioning import (
    CaptionMetric,
    JavaNotFoundWarning,
    caption_scores,
    java_available,
    ptb_tokenize,
    simple_tokenize,
)
from vislang.shared.metrics.classification import (
    SNLI_VE_LABELS,
    NLVR2Metric,
    SNLIVEAccuracy,
    TopKAccuracy,
    average_views,
    multiview_topk_accuracy,
    nlvr2_scores,
    snli_ve_accuracy,
    topk_accuracy,
)
from vislang.shared.metrics.ddp import (
    SampleMetric,
    UnrepeatedDistributedSampler,
    decode_strings,
    encode_strings,
    evaluation_sampler,
    first_occurrence,
)
from vislang.shared.metrics.retrieval import (
    Positives,
    RetrievalMetric,
    blockwise_similarity,
    dual_softmax,
    positives_from_keys,
    retrieval_metrics,
    retrieval_ranks,
    transpose_positives,
)
from vislang.shared.metrics.segmentation import (
    SegmentationIoU,
    match_masks,
    pair_intersection_union,
    segmentation_scores,
)
from vislang.shared.metrics.vqa import (
    VQAAccuracy,
    aggregate_vqa,
    build_answer_vocab,
    evaluate_vqa,
    normalize_vocab_answer,
    process_digit_article,
    process_punctuation,
    read_vqa_results,
    vqa_accuracy,
    vqa_soft_score,
    vqa_soft_targets,
    write_vqa_results,
)

__all__ = [
    "CaptionMetric",
    "JavaNotFoundWarning",
    "NLVR2Metric",
    "Positives",
    "RetrievalMetric",
    "SNLIVEAccuracy",
    "SNLI_VE_LABELS",
    "SampleMetric",
    "SegmentationIoU",
    "TopKAccuracy",
    "UnrepeatedDistributedSampler",
    "VQAAccuracy",
    "aggregate_vqa",
    "average_views",
    "blockwise_similarity",
    "build_answer_vocab",
    "caption_scores",
    "decode_strings",
    "dual_softmax",
    "encode_strings",
    "evaluate_vqa",
    "evaluation_sampler",
    "first_occurrence",
    "java_available",
    "match_masks",
    "multiview_topk_accuracy",
    "nlvr2_scores",
    "normalize_vocab_answer",
    "pair_intersection_union",
    "positives_from_keys",
    "process_digit_article",
    "process_punctuation",
    "ptb_tokenize",
    "read_vqa_results",
    "retrieval_metrics",
    "retrieval_ranks",
    "segmentation_scores",
    "simple_tokenize",
    "snli_ve_accuracy",
    "topk_accuracy",
    "transpose_positives",
    "vqa_accuracy",
    "vqa_soft_score",
    "vqa_soft_targets",
    "write_vqa_results",
]
