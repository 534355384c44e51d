"""vislang.shared.text: train a WordPiece tokenizer, load tokenizers/models locally, offline hub errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vislang.shared.text import (
    BERT_SPECIAL_TOKENS,
    HubModelUnavailableError,
    load_text_model,
    load_tokenizer,
    tiny_bert_config,
    train_wordpiece_tokenizer,
)

CORPUS = [
    "A red circle moves to the left of the blue square.",
    "Two green triangles are above the yellow circle.",
    "How many squares are there? There are three squares.",
    "The purple triangle moves right, then stops.",
    "Is the orange circle bigger than the red square? No.",
] * 20


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A generator: the function must accept any iterable, read once.
    return train_wordpiece_tokenizer((t for t in CORPUS), tmp_path_factory.mktemp("tok"), vocab_size=200)


def test_trained_tokenizer_loads_as_bert(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer, BertTokenizerFast

    assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= {p.name for p in tokenizer_dir.iterdir()}
    tokenizer = load_tokenizer(tokenizer_dir)
    assert isinstance(tokenizer, BertTokenizerFast)
    assert isinstance(AutoTokenizer.from_pretrained(tokenizer_dir), BertTokenizerFast)
    # BERT's special-token ids.
    assert [tokenizer.convert_tokens_to_ids(t) for t in BERT_SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id) == (0, 1, 2)
    assert (tokenizer.sep_token_id, tokenizer.mask_token_id) == (3, 4)
    assert tokenizer.model_max_length == 512
    assert 40 < len(tokenizer) <= 200


def test_encode_decode_round_trip(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tokenizer_dir))
    encoded = tokenizer("The RED circle moves left!", "How many squares?")
    ids = encoded["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert ids.count(tokenizer.sep_token_id) == 2  # [CLS] A [SEP] B [SEP]
    assert tokenizer.unk_token_id not in ids
    assert encoded["token_type_ids"][-1] == 1
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "the red circle moves left! how many squares?"  # lower-cased like bert-base-uncased
    # Characters the corpus never used still tokenize (printable ASCII alphabet), unknown words split.
    unseen = tokenizer("zebra #42")["input_ids"]
    assert tokenizer.unk_token_id not in unseen
    assert tokenizer.decode(unseen, skip_special_tokens=True) == "zebra # 42"
    batch = tokenizer(["a red circle", "two green triangles are above"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == 0 and batch["attention_mask"][0, -1].item() == 0


def test_cased_tokenizer_keeps_case(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(train_wordpiece_tokenizer(CORPUS, tmp_path, vocab_size=200, lowercase=False))
    ids = tokenizer("Red red")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Red red"
    assert ids[1] != ids[2]
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        train_wordpiece_tokenizer(CORPUS, tmp_path / "small", vocab_size=50)


def test_load_text_model_from_local_directory(tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import BertModel

    tokenizer = load_tokenizer(tokenizer_dir)
    config = tiny_bert_config(tokenizer, hidden=32, layers=1, heads=2, max_position=64)
    assert config.vocab_size == len(tokenizer) and config.intermediate_size == 128 and config.pad_token_id == 0
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path / "bert")

    model = load_text_model(tmp_path / "bert")
    assert isinstance(model, BertModel)
    reference = BertModel.from_pretrained(tmp_path / "bert")
    batch = tokenizer(["a red circle"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, reference(**batch).last_hidden_state)
    assert (
        load_text_model(tmp_path / "bert", dtype=torch.bfloat16).embeddings.word_embeddings.weight.dtype
        == torch.bfloat16
    )
    with pytest.raises(ValueError, match="divisible"):
        tiny_bert_config(tokenizer, hidden=30, heads=4)


def test_offline_unknown_hub_name_gives_one_clear_error() -> None:
    name = "vislang-test/definitely-not-cached-model"
    for load, what in [(load_tokenizer, "tokenizer"), (load_text_model, "text model")]:
        with pytest.raises(HubModelUnavailableError) as info:
            load(name)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"{what} '{name}'")
        assert "HF_HUB_OFFLINE=1" in message  # why
        assert f"hf download {name}" in message  # what to download
        assert "cache" in message  # and where it must go


def test_missing_local_directory_is_not_treated_as_hub_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="text model directory not found"):
        load_text_model("./no/such/dir")


def test_shipped_synthetic_tokenizer_covers_the_world() -> None:
    from vislang.shared.data.synthetic import SyntheticWorld, vocabulary
    from vislang.shared.text import SYNTHETIC_TOKENIZER_DIR

    tokenizer = load_tokenizer(SYNTHETIC_TOKENIZER_DIR)
    # every word the world can say is a single token: no [UNK], no splitting (rebuild the asset with
    # `python -m vislang.shared.text` when the world's templates change)
    for word in vocabulary():
        assert tokenizer.tokenize(word) == [word.lower()], f"{word!r} is not one token: rebuild the tokenizer"
    world = SyntheticWorld(seed=3)
    for text in world.video_captions(5) + [q.question for q in world.video_qa(5)]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")
