"""Tokenizers and text encoders, from a local Hugging Face directory or the hub cache.

Every package loads text components through ``load_tokenizer`` / ``load_text_model``, whether the
name is ``bert-base-uncased`` (SOHO, Pixel-BERT, the VQA ensemble) or a directory that
``train_wordpiece_tokenizer`` wrote from the synthetic world's captions -- so demos and tests exercise
the same code path as the papers' settings, without any download.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # transformers takes seconds to import; load it only when a function needs it
    from transformers import BertConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BERT_SPECIAL_TOKENS",
    "PACKAGE_SCHEME",
    "SYNTHETIC_TOKENIZER_DIR",
    "HubModelUnavailableError",
    "build_synthetic_tokenizer",
    "load_text_model",
    "load_tokenizer",
    "package_path",
    "tiny_bert_config",
    "train_wordpiece_tokenizer",
]

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""BERT's special tokens; trained in this order they get ids 0..4, so [PAD] is 0 as in BERT."""


class HubModelUnavailableError(OSError):
    """A hub name is neither cached nor downloadable (offline or no network)."""


def _is_path_like(name_or_path: str) -> bool:
    """Whether the user clearly meant a filesystem path rather than a hub id (``org/name``, one slash)."""
    return name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path


PACKAGE_SCHEME = "pkg://"
"""Prefix of a path inside an installed package: ``pkg://vislang.shared/assets/synthetic_wordpiece`` is
the folder ``assets/synthetic_wordpiece`` of the ``vislang.shared`` package, wherever it is installed
and whatever the working directory (the shipped demo configs name their tokenizer this way)."""


def package_path(value: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``value`` with a `PACKAGE_SCHEME` prefix replaced by the folder it names; anything else unchanged.

    Raises:
        FileNotFoundError: If the package is not installed.
    """
    if not isinstance(value, str) or not value.startswith(PACKAGE_SCHEME):
        return value
    package, _, inner = value[len(PACKAGE_SCHEME) :].partition("/")
    import importlib.resources

    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise FileNotFoundError(f"{value}: package {package!r} is not installed") from None
    return str(Path(str(root)) / inner)


def _resolve(name_or_path: str | os.PathLike[str], what: str) -> tuple[str, bool]:
    """Return ``(source, is_local)``: an existing directory is used as is, anything else is a hub name."""
    name_or_path = package_path(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path), True
    if isinstance(name_or_path, os.PathLike) or _is_path_like(str(name_or_path)):
        raise FileNotFoundError(f"{what} directory not found: {path}")
    return str(name_or_path), False


def _unavailable(name: str, what: str) -> HubModelUnavailableError:
    from huggingface_hub import constants

    cache = constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        why = "the hub is offline (HF_HUB_OFFLINE=1)"
    else:
        why = "it could not be downloaded (no network, or no such repository)"
    return HubModelUnavailableError(
        f"{what} {name!r} is not a local directory and not in the Hugging Face cache ({cache}), and {why}; "
        f"on a machine with internet run `hf download {name} --local-dir <dir>` and pass <dir> instead of "
        f"the name (or run `hf download {name}` and copy the cache to {cache})"
    )


def load_tokenizer(name_or_path: str | os.PathLike[str], **kwargs: Any) -> PreTrainedTokenizerBase:
    """Load a tokenizer with ``transformers.AutoTokenizer``.

    Args:
        name_or_path: A local directory in Hugging Face format (used as is), or a hub name such as
            ``bert-base-uncased`` (resolved through the Hugging Face cache; downloaded only when online).
        **kwargs: Passed to ``AutoTokenizer.from_pretrained`` (e.g. ``model_max_length``).

    Returns:
        The tokenizer (a fast, ``tokenizers``-backed one when the directory has ``tokenizer.json``).

    Raises:
        FileNotFoundError: If ``name_or_path`` is an explicit path that does not exist.
        HubModelUnavailableError: If a hub name is not cached and cannot be downloaded.
    """
    from transformers import AutoTokenizer

    source, is_local = _resolve(name_or_path, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as err:
        if is_local:
            raise
        raise _unavailable(source, "tokenizer") from err


def load_text_model(
    name_or_path: str | os.PathLike[str],
    *,
    auto_class: type | None = None,
    dtype: Any = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load pretrained text-model weights with a ``transformers`` Auto class.

    Args:
        name_or_path: A local directory written by ``save_pretrained`` (used as is) or a hub name.
        auto_class: The Auto class to use; ``None`` means ``AutoModel`` (the bare encoder, e.g.
            ``BertModel``). Pass ``AutoModelForCausalLM`` for LLaMA/Vicuna (PixelLM).
        dtype: Parameter dtype such as ``torch.bfloat16``; ``None`` keeps the checkpoint's default.
        **kwargs: Passed to ``from_pretrained``; configuration fields are overridden this way
            (e.g. ``hidden_dropout_prob=0.0``, ``add_pooling_layer=False``).

    Returns:
        The model, in eval mode as ``from_pretrained`` returns it.

    Raises:
        FileNotFoundError: If ``name_or_path`` is an explicit path that does not exist.
        HubModelUnavailableError: If a hub name is not cached and cannot be downloaded.
    """
    from transformers import AutoModel

    cls = auto_class if auto_class is not None else AutoModel
    source, is_local = _resolve(name_or_path, "text model")
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as err:
        if is_local:
            raise
        raise _unavailable(source, "text model") from err


def train_wordpiece_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    vocab_size: int = 30522,
    lowercase: bool = True,
    *,
    min_frequency: int = 1,
    model_max_length: int = 512,
) -> Path:
    """Train a BERT-style WordPiece tokenizer and save it in Hugging Face format.

    The pipeline is ``bert-base-uncased``'s: BERT normaliser (lower-casing and accent stripping when
    ``lowercase``), BERT pre-tokenizer (whitespace and punctuation split), WordPiece with ``##``
    continuations, ``[CLS] A [SEP] B [SEP]`` post-processing, and [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3,
    [MASK]=4. ``AutoTokenizer.from_pretrained(out_dir)`` then returns a ``BertTokenizerFast``, so
    ``load_tokenizer(out_dir)`` behaves like ``load_tokenizer("bert-base-uncased")`` on a small vocabulary.

    Args:
        texts: The training corpus, e.g. the synthetic world's captions and questions (read once).
        out_dir: Directory to write ``tokenizer.json``, ``tokenizer_config.json`` and ``vocab.txt`` to.
        vocab_size: Maximum vocabulary size (BERT's 30522 by default); a small corpus yields fewer. It
            includes every printable-ASCII character as a word-initial and a ``##`` piece.
        lowercase: Uncased (as ``bert-base-uncased``) or cased tokenizer.
        min_frequency: Minimum count for a merge; 1 keeps every word of a small synthetic corpus whole.
        model_max_length: Maximum sequence length recorded in the config (BERT's 512).

    Returns:
        ``out_dir`` as a ``Path``.
    """
    from tokenizers import models
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = BertWordPieceTokenizer(lowercase=lowercase)
    # Seed the alphabet with printable ASCII so letters, digits and punctuation that the corpus happens
    # to lack still tokenize to themselves instead of [UNK].
    alphabet = string.ascii_lowercase + string.digits + string.punctuation
    if not lowercase:
        alphabet += string.ascii_uppercase
    # Reserve room for the "##c" pieces added below, so the result never exceeds ``vocab_size``.
    minimum = len(BERT_SPECIAL_TOKENS) + 2 * len(alphabet)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (special tokens + character pieces)")
    tokenizer.train_from_iterator(
        iter(texts),
        vocab_size=vocab_size - len(alphabet),
        min_frequency=min_frequency,
        initial_alphabet=list(alphabet),
        special_tokens=list(BERT_SPECIAL_TOKENS),
        show_progress=False,
    )
    # WordPiece turns a whole word into [UNK] when one piece is missing, and the trainer only adds the
    # word-internal "##c" pieces it saw. Like BERT's vocabulary, include every alphabet character in
    # both forms, so an unseen word (a new colour name, a number) splits into characters instead.
    vocab = tokenizer.get_vocab()
    for char in alphabet:
        for piece in (char, f"##{char}"):
            vocab.setdefault(piece, len(vocab))
    tokenizer._tokenizer.model = models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##")
    hf_tokenizer = BertTokenizerFast(
        tokenizer_object=tokenizer._tokenizer,  # the trained tokenizers.Tokenizer; no public accessor
        do_lower_case=lowercase,
        strip_accents=None,
        model_max_length=model_max_length,
    )
    hf_tokenizer.save_pretrained(out)
    tokenizer.save_model(str(out))  # vocab.txt, for tools that read the original BERT format
    return out


def tiny_bert_config(
    tokenizer: PreTrainedTokenizerBase,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    intermediate: int | None = None,
    max_position: int = 128,
    initializer_range: float = 0.02,
) -> BertConfig:
    """A small ``BertConfig`` matching ``tokenizer``, for demos and tests on the synthetic world.

    Args:
        tokenizer: Supplies the vocabulary size (``len(tokenizer)``, added tokens included) and pad id.
        hidden: Hidden size; must be divisible by ``heads``.
        layers: Number of transformer layers.
        heads: Attention heads.
        intermediate: Feed-forward size; ``None`` means ``4 * hidden`` as in BERT.
        max_position: Maximum sequence length (position embeddings).
        initializer_range: Std of the normal weight init (BERT's 0.02).

    Returns:
        The configuration; build the model with ``transformers.BertModel(config)``.
    """
    from transformers import BertConfig

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate if intermediate is not None else 4 * hidden,
        max_position_embeddings=max_position,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


SYNTHETIC_TOKENIZER_DIR = Path(__file__).parent / "assets" / "synthetic_wordpiece"
"""The synthetic world's WordPiece tokenizer, shipped with vislang-shared (a few kB), so demos and tests
load a tokenizer from disk exactly as they would load ``bert-base-uncased`` -- without a download and
without training one first. Rebuild it with ``python -m vislang.shared.text`` when the world's templates
change; a test checks that every word of the world is one of its tokens. (The tokenizers library's trainer
orders equally frequent pieces arbitrarily, so two builds may number the ids differently.)"""


def build_synthetic_tokenizer(out_dir: str | os.PathLike[str] = SYNTHETIC_TOKENIZER_DIR) -> Path:
    """Train the WordPiece tokenizer of the synthetic world's corpus (every template word included)."""
    from vislang.shared.data.synthetic import SyntheticWorld

    return train_wordpiece_tokenizer(SyntheticWorld(seed=0).corpus(), out_dir, vocab_size=1000)


if __name__ == "__main__":
    print(f"wrote {build_synthetic_tokenizer()}")
