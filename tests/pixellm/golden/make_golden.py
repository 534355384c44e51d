"""Make PixelLM's golden parity fixtures by running the OFFICIAL code (not run by CI).

Official repository: https://github.com/MaverickRen/PixelLM at commit
ebf07922745a926517a9a1d16fddd392a7544bb0 ("Update PixelLM.py"). The official code is never committed here;
this script imports it from a local checkout.

Run (the official code needs the transformers it pins, 4.31, so use a scratch environment):

    python3 -m venv /tmp/pxoff
    echo /path/to/vislang/.venv/lib/python3.11/site-packages > /tmp/pxoff/lib/python3.11/site-packages/zz.pth
    /tmp/pxoff/bin/pip install transformers==4.31.0 tokenizers==0.13.3
    git clone https://github.com/MaverickRen/PixelLM /tmp/pxofficial && git -C /tmp/pxofficial checkout ebf0792
    OMP_NUM_THREADS=1 /tmp/pxoff/bin/python tests/pixellm/golden/make_golden.py --official /tmp/pxofficial

What it builds and saves (every file well under 1 MB):

* ``model/``: the official ``PixelLMForCausalLM`` with the released switches (``image_feature_scale_num=2``,
  ``seg_token_num=3``, ``pad_train_clip_images``, ``resize_vision_tower`` to 448, ``vision_tower_for_mask``,
  ``separate_mm_projector``, ``use_mm_start_end``), built exactly as ``train_ds.py`` builds it
  (``from_pretrained`` of a LLaVA directory, ``initialize_vision_modules`` -> the official CLIP tower loads
  a 336-px CLIP and interpolates its positions to 448, ``initialize_pixellm_modules``), with a small LLaMA
  (width 32) and a small CLIP (width 16, 12 layers, patch 14). The SAM-style parts are re-instantiated
  with the official classes at width 32 (the official builder hard-codes 256; see ``_shrink``), and the
  decoder's hard-coded 256-channel ``repeat_interleave`` of the previous mask broadcasts instead (the
  same product for any width). Every parameter and buffer gets random values, LayerNorms included.

  - ``release/model.safetensors``: the state dict as ``merge_lora_weights_and_save_hf_model.py`` saves it (every
    key without ``vision_tower``), ``clip/model.safetensors`` + ``clip/config.json``: the 336-px CLIP in
    Hugging Face layout (the release takes CLIP from its own weights);
  - ``inputs.safetensors``: one image (a 28x28 random tensor, nearest-upsampled to the resized size and
    zero-padded to 448 in both implementations), two questions of one image as the official collate
    pads them, their attention masks, resize and original sizes;
  - ``outputs.safetensors``: per target the level-0 (64x64) and level-1 (128x128) decoder logits, the fused
    128x128 logits, the final masks at the original size (``model_forward(inference=True)``).

* ``eval/``: the official ``train_ds.ar_validate`` run on constructed per-image predictions (extra
  non-empty predictions, missing predictions, several questions per image) with a stub model that returns
  them; ``cases.safetensors`` holds the predictions and masks, ``scores.json`` the printed gIoU / cIoU.

Stubs: ``torch.Tensor.cuda`` is the identity (CPU), ``deepspeed``, ``peft``, ``cv2``, tensorboard and the
training datasets' module are empty modules (``ar_validate`` and the model do not use them), and
``torch.distributed.all_reduce`` is the identity (one process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

OFFICIAL_REPO = "MaverickRen/PixelLM"
OFFICIAL_COMMIT = "ebf07922745a926517a9a1d16fddd392a7544bb0"
HERE = Path(__file__).resolve().parent

# sizes of the small model
CLIP = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 12,
    "num_attention_heads": 2,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 16,
}
LLM = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
}
BASE_VOCAB = 32  # ids 0 unk, 1 bos, 2 eos, then "words"
DECODER = {"dim": 32, "mlp_dim": 64, "heads": 4, "depth": 2}
ORIGINAL_SIZE = (30, 42)  # (H, W) of the image; resized to (320, 448) on the longest side
RESIZED = (320, 448)


def _stub_modules() -> None:
    import transformers  # noqa: F401  (before the stubs: it probes which packages exist)

    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU run
    for name in ("cv2",):
        sys.modules[name] = types.ModuleType(name)
    import model.PixelLM  # noqa: F401  (imports transformers' models before the training stubs below)

    for name in ("deepspeed", "torch.utils.tensorboard"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torch.utils.tensorboard"].SummaryWriter = object
    peft = types.ModuleType("peft")
    peft.LoraConfig = peft.get_peft_model = None
    sys.modules["peft"] = peft
    for name, attrs in {
        "utils.dataset": ("HybridDataset", "ValDataset", "collate_fn"),
        "utils.multi_reason_seg_val_dataset": ("MultiReasonSegValDataset",),
    }.items():
        mod = types.ModuleType(name)
        for attr in attrs:
            setattr(mod, attr, None)
        sys.modules[name] = mod
    import torch.distributed as dist

    dist.all_reduce = lambda *a, **k: None  # one process


def _randomise(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.5) -> None:
    """Random values in every parameter and floating buffer (LayerNorm weights/biases too)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)


def _make_clip(directory: Path, generator: torch.Generator) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    model = CLIPVisionModel(CLIPVisionConfig(**CLIP))
    _randomise(model, generator, 0.2)
    with torch.no_grad():  # LayerNorm gains around 1 keep the 12 layers' activations in range
        for name, p in model.named_parameters():
            if "layer_norm" in name.replace("layrnorm", "layer_norm") and name.endswith("weight"):
                p.add_(1.0)
        model.vision_model.embeddings.position_ids = torch.arange(577)[None]
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "preprocessor_config.json").write_text(json.dumps({"crop_size": 336, "size": 336}))


def _make_llava(directory: Path, clip_dir: Path, generator: torch.Generator) -> None:
    """A LLaVA-Lightning-like directory: LlavaLlamaForCausalLM config + weights, vocabulary after added tokens."""
    from model.llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

    config = LlavaConfig(
        **LLM,
        vocab_size=BASE_VOCAB + 8,
        mm_vision_tower=str(clip_dir),
        mm_hidden_size=16,
        mm_vision_select_layer=-2,
        mm_use_im_start_end=True,
        separate_mm_projector=True,
        mm_projector_hidden_dim=2,
        mm_projector_out_dim=1,
        tie_word_embeddings=False,
    )
    config.mm_vision_select_feature = "patch"
    model = LlavaLlamaForCausalLM(config)
    _randomise(model, generator, 0.3)
    state = {k: v for k, v in model.state_dict().items() if "vision_tower" not in k}
    model.save_pretrained(directory, state_dict=state, safe_serialization=True)


def _shrink(model) -> None:
    """Re-instantiate the SAM-style parts with the official classes at the small width (the official builder
    hard-codes 256 channels, 2048 MLP, 8 heads); the neck keeps its official layers with the width replaced."""
    from model.segment_anything.modeling import (
        LayerNorm2d,
        MaskDecoderMultiScale,
        PromptEncoder,
        TwoWayTransformer,
    )

    d = DECODER["dim"]
    inner = model.get_model()
    inner.prompt_encoder = PromptEncoder(
        embed_dim=d, image_embedding_size=(32, 32), input_image_size=(448, 448), mask_in_chans=16
    )
    transformer = TwoWayTransformer(
        depth=DECODER["depth"], embedding_dim=d, mlp_dim=DECODER["mlp_dim"], num_heads=DECODER["heads"]
    )
    inner.mask_decoder = MaskDecoderMultiScale(
        num_multimask_outputs=3,
        transformer=transformer,
        transformer_dim=d,
        iou_head_depth=3,
        iou_head_hidden_dim=d,
        image_feature_scale_num=2,
    )
    layers = []
    for layer in inner.image_feature_neck:
        if isinstance(layer, torch.nn.Conv2d):
            layers.append(
                torch.nn.Conv2d(
                    layer.in_channels if layer.in_channels != 256 else d,
                    d,
                    layer.kernel_size,
                    padding=layer.padding,
                    bias=layer.bias is not None,
                )
            )
        else:
            assert isinstance(layer, LayerNorm2d)
            layers.append(LayerNorm2d(d))
    inner.image_feature_neck = torch.nn.Sequential(*layers)


def _broadcast_previous_mask():
    """The level-1 modulation repeats the previous mask over 256 channels (the official width); with the small
    width the same product is a broadcast of the single channel."""
    original = torch.repeat_interleave

    def repeat(x, repeats=None, dim=None, **kwargs):
        if repeats == 256 and dim == 1 and x.dim() == 4 and x.shape[1] == 1:
            return x
        return original(x, repeats, dim=dim, **kwargs) if repeats is not None else original(x, **kwargs)

    return repeat


def make_model_fixture(out: Path, generator: torch.Generator) -> None:
    from model.PixelLM import PixelLMForCausalLM
    from model.segment_anything.modeling import LayerNorm2d

    work = Path(tempfile.mkdtemp(prefix="pixellm_golden_"))
    clip_dir, llava_dir = work / "clip", work / "llava"
    _make_clip(clip_dir, generator)
    _make_llava(llava_dir, clip_dir, generator)
    seg_ids = list(range(BASE_VOCAB, BASE_VOCAB + 6))  # train_ds.py: [SEG0..5] added first
    im_start, im_end = BASE_VOCAB + 6, BASE_VOCAB + 7  # then <im_start>, <im_end>
    kwargs = {
        "train_mask_decoder": True,
        "out_dim": DECODER["dim"],
        "ce_loss_weight": 1.0,
        "dice_loss_weight": 0.5,
        "bce_loss_weight": 2.0,
        "seg_token_idx": seg_ids,
        "vision_pretrained": None,
        "vision_tower": str(clip_dir),
        "use_mm_start_end": True,
        "seg_token_num": 3,
        "logger": None,
        "tokenizer": None,
        "local_rank": 0,
        "pad_train_clip_images": True,
        "resize_vision_tower": True,
        "resize_vision_tower_size": 448,
        "vision_tower_for_mask": True,
        "separate_mm_projector": True,
        "masks_process_with_clip": False,
        "image_feature_scale_num": 2,
    }
    model = PixelLMForCausalLM.from_pretrained(llava_dir, torch_dtype=torch.float32, **kwargs)
    model.get_model().initialize_vision_modules(model.get_model().config)
    model.get_model().initialize_pixellm_modules(model.get_model().config)
    _shrink(model)
    # random values for the PixelLM parts (the LLM and CLIP already hold random "pretrained" weights), with
    # the LayerNorm gains around 1 so that the masks' logits keep a useful range
    for name in (
        "prompt_encoder",
        "mask_decoder",
        "image_feature_neck",
        "text_hidden_fcs",
        "mm_projector",
        "out_mm_projector",
    ):
        part = getattr(model.get_model(), name)
        _randomise(part, generator, 0.3)
        with torch.no_grad():
            for module in part.modules():
                if isinstance(module, (torch.nn.LayerNorm, LayerNorm2d)):
                    module.weight.add_(1.0)
    model.eval()

    release = {k: v.contiguous() for k, v in model.state_dict().items() if "vision_tower" not in k}
    (out / "release").mkdir(exist_ok=True)
    save_file(
        release, out / "release" / "model.safetensors", metadata={"repo": OFFICIAL_REPO, "commit": OFFICIAL_COMMIT}
    )
    (out / "clip").mkdir(exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        (out / "clip" / name).write_bytes((clip_dir / name).read_bytes())

    # inputs: one image, two questions (right-padded with unk = 0 as the official collate pads)
    small = torch.rand(3, 28, 28, generator=generator) * 4 - 2
    image = torch.zeros(1, 3, 448, 448)
    image[0, :, : RESIZED[0], : RESIZED[1]] = torch.nn.functional.interpolate(small[None], RESIZED, mode="nearest")[0]
    seg = seg_ids

    def words(n):
        return torch.randint(3, BASE_VOCAB, (n,), generator=generator).tolist()

    q1 = [1, *words(5), im_start, -200, im_end, *words(6), *seg, *words(2), *seg, 2]
    q2 = [1, *words(4), im_start, -200, im_end, *words(3), *seg, *words(3), 2]
    length = max(len(q1), len(q2))
    input_ids = torch.tensor([q + [0] * (length - len(q)) for q in (q1, q2)])
    attention = torch.tensor([[1] * len(q) + [0] * (length - len(q)) for q in (q1, q2)])

    levels: list[torch.Tensor] = []
    decoder_forward = model.get_model().mask_decoder.forward

    def record_levels(*a, **k):
        masks, iou = decoder_forward(*a, **k)
        levels.append(masks[:, 0].detach().clone())
        return masks, iou

    fused: list[torch.Tensor] = []
    postprocess = model.postprocess_masks

    def record_fused(masks, input_size, original_size):
        fused.append(masks[:, 0].detach().clone())
        return postprocess(masks, input_size, original_size)

    model.get_model().mask_decoder.forward = record_levels
    model.postprocess_masks = record_fused
    import model.segment_anything.modeling.mask_decoder_multi_scale as msd

    msd.torch = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    msd.torch.repeat_interleave = _broadcast_previous_mask()
    with torch.no_grad():
        result = model.model_forward(
            images=torch.zeros(1, 3, 8, 8),
            images_clip=image,
            input_ids=input_ids,
            labels=None,
            attention_masks=attention,
            offset=torch.tensor([0, 2]),
            masks_list=[torch.zeros(3, *ORIGINAL_SIZE)],
            label_list=[torch.zeros(ORIGINAL_SIZE)],
            resize_list=[RESIZED],
            inference=True,
            clip_resize_list=[RESIZED],
        )
    masks = result["pred_masks"][0]
    assert masks.shape == (3, *ORIGINAL_SIZE), masks.shape
    save_file(
        {
            "small_image": small.contiguous(),
            "images_clip_shape": torch.tensor([448, 448]),
            "input_ids": input_ids,
            "attention_mask": attention,
            "resized": torch.tensor(RESIZED),
            "original": torch.tensor(ORIGINAL_SIZE),
        },
        out / "inputs.safetensors",
    )
    save_file(
        {
            "level0": levels[0].contiguous(),
            "level1": levels[1].contiguous(),
            "fused": fused[0].contiguous(),
            "masks": masks.contiguous(),
            "mask_scores": result["mask_scores"][0].contiguous(),
        },
        out / "outputs.safetensors",
    )
    meta = {
        "repo": OFFICIAL_REPO,
        "commit": OFFICIAL_COMMIT,
        "clip": CLIP,
        "llm": LLM,
        "base_vocab": BASE_VOCAB,
        "vocab_size": BASE_VOCAB + 8,
        "codebook_ids": seg_ids,
        "im_start_id": im_start,
        "im_end_id": im_end,
        "decoder": DECODER,
        "image_token_index": -200,
        "mm_vision_select_layer": -2,
    }
    (out / "config.json").write_text(json.dumps(meta, indent=1))
    print(
        "model fixture:",
        {k: tuple(v.shape) for k, v in {"level0": levels[0], "level1": levels[1]}.items()},
        "mask range",
        float(masks.min()),
        float(masks.max()),
    )


def _eval_cases(generator: torch.Generator) -> list[dict]:
    """Per image its questions: (predicted logits, ground-truth masks). Ground truths are disjoint rectangles;
    a matched prediction is its mask with noisy logits, an extra one a blob elsewhere whose logits cross
    [0.5, 1] on some pixels (or stay above 1: a confident false positive)."""
    h, w = 24, 32

    def rect(y0, y1, x0, x1):
        m = torch.zeros(h, w)
        m[y0:y1, x0:x1] = 1
        return m

    def pred_of(mask, gain=4.0):
        return (mask * 2 - 1) * gain + torch.randn(h, w, generator=generator) * 3.0

    def extra(y0, y1, x0, x1, high=False):
        logits = torch.full((h, w), -6.0)
        logits[y0:y1, x0:x1] = torch.rand(y1 - y0, x1 - x0, generator=generator) * 2.5 + (1.5 if high else 0.2)
        return logits

    g = [rect(0, 8, 0, 10), rect(10, 20, 12, 24), rect(2, 9, 22, 31), rect(14, 23, 0, 8)]
    images = [
        [  # two questions: an extra non-empty prediction; a missing prediction
            ([pred_of(g[0]), extra(12, 22, 26, 32), pred_of(g[1])], [g[0], g[1]]),
            ([pred_of(g[2])], [g[2], g[3]]),
        ],
        [([pred_of(g[1]), extra(0, 6, 0, 6, high=True)], [g[1]])],  # a confident extra prediction (logits > 1)
        [  # three questions, the last without any prediction
            ([pred_of(g[3])], [g[3]]),
            ([pred_of(g[0]), pred_of(g[2])], [g[2], g[0]]),
            ([], [g[1]]),
        ],
    ]
    return [
        {"questions": [(torch.stack(p) if p else torch.zeros(0, h, w), torch.stack(t)) for p, t in image]}
        for image in images
    ]


def make_eval_fixture(out: Path, generator: torch.Generator) -> None:
    """Run the official `train_ds.ar_validate` on constructed predictions through a stub model."""
    import train_ds

    cases = _eval_cases(generator)
    seg_group = " ".join(f"[SEG{k}]" for k in range(6))

    class Tokenizer:
        def decode(self, ids, skip_special_tokens=False):
            return "USER: question ASSISTANT: " + " and ".join(["a thing " + seg_group] * int(ids.numel()))

    class Base:
        def evaluate(self, images_clip, images, input_ids, *args, **kwargs):
            image = cases[int(images_clip.flatten()[0])]
            preds = [p for p, _ in image["questions"]]
            output_ids = [torch.zeros(1, p.shape[0], dtype=torch.long) for p in preds]
            logits = torch.cat(preds)
            scores = (logits.sigmoid().flatten(1) * (logits > 0).flatten(1)).sum(1)
            return output_ids, [logits], [torch.tensor([p.shape[0] for p in preds])], [scores]

    class Engine:
        base_model = Base()

        def __call__(self, **kwargs):
            return None

        def eval(self):
            return self

    scalars: dict[str, float] = {}

    class Writer:
        def add_scalar(self, name, value, step):
            scalars[name] = float(value)

    class Logger:
        def info(self, *args):
            pass

    loader = []
    for number, image in enumerate(cases):
        gts = torch.cat([t for _, t in image["questions"]])
        counts = [t.shape[0] for _, t in image["questions"]]
        names = [[f"(object{k} [0, 0, 1, 1])" for k in range(c)] for c in counts]
        loader.append(
            {
                "image_paths": [f"image{number}.jpg"],
                "images": torch.zeros(1, 3, 4, 4),
                "images_clip": torch.full((1, 3, 4, 4), float(number)),
                "resize_list": [(24, 32)],
                "clip_resize_list": [(24, 32)],
                "label_list": [torch.zeros(24, 32)],
                "input_ids": torch.zeros(len(counts), 4, dtype=torch.long),
                "masks_list": [gts],
                "questions_list": [(["q"] * len(counts), counts, names, "prompt")],
            }
        )
    args = types.SimpleNamespace(log_dir=tempfile.mkdtemp(), local_rank=0, precision="fp32")
    train_ds.ar_validate(
        [loader],
        Engine(),
        0,
        Writer(),
        args,
        Logger(),
        ["muse_constructed"],
        Tokenizer(),
        seg_token_num=3,
        image_feature_scale_num=2,
    )
    tensors, image_ids = {}, []
    for number, image in enumerate(cases):
        for q, (pred, gt) in enumerate(image["questions"]):
            tensors[f"image{number}_q{q}_pred"] = pred.contiguous()
            tensors[f"image{number}_q{q}_gt"] = gt.contiguous()
            image_ids.append(number)
    save_file(tensors, out / "cases.safetensors")
    result = {
        "repo": OFFICIAL_REPO,
        "commit": OFFICIAL_COMMIT,
        "function": "train_ds.ar_validate",
        "image_of_question": image_ids,
        "giou": scalars["val/giou"],
        "ciou": scalars["val/ciou"],
    }
    (out / "scores.json").write_text(json.dumps(result, indent=1))
    print("eval fixture:", result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="checkout of MaverickRen/PixelLM at " + OFFICIAL_COMMIT)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.official))
    _stub_modules()
    out = Path(args.out)
    generator = torch.Generator().manual_seed(0)
    (out / "model").mkdir(parents=True, exist_ok=True)
    make_model_fixture(out / "model", generator)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    make_eval_fixture(out / "eval", torch.Generator().manual_seed(1))


if __name__ == "__main__":
    main()
