"""The transformer itself: shapes, oracles (SDPA), causality, padding, masks and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import B, C, H, T, V

from teachkit.config import ModelConfig, preset
from teachkit.model import (
    GPT,
    Attention,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    build_model,
    count_parameters,
)


def bert_cfg(**kw) -> ModelConfig:
    return ModelConfig(
        arch="bert",
        vocab_size=V,
        d_model=C,
        n_heads=H,
        n_layers=2,
        d_ff=37,
        max_len=16,
        dropout=0.0,
        attn_dropout=0.0,
        **kw,
    )


def gpt_cfg(**kw) -> ModelConfig:
    return preset(
        "gpt-tiny",
        vocab_size=V,
        d_model=C,
        n_heads=H,
        n_layers=2,
        d_ff=37,
        max_len=16,
        dropout=0.0,
        attn_dropout=0.0,
        **kw,
    )


def ids(b=B, t=T) -> torch.Tensor:
    return torch.randint(5, V, (b, t))


def test_shapes_of_every_model():
    x = ids()
    out = BertForPreTraining(bert_cfg()).eval()(x, output_attentions=True)
    assert out.logits.shape == (B, T, V)
    assert out.nsp_logits.shape == (B, 2)
    assert out.hidden.shape == (B, T, C) and out.pooled.shape == (B, C)
    assert len(out.attentions) == 2 and all(a.shape == (B, H, T, T) for a in out.attentions)
    assert BertForSequenceClassification(bert_cfg(), n_classes=5)(x).logits.shape == (B, 5)
    assert GPT(gpt_cfg())(x).logits.shape == (B, T, V)


def test_attention_weights_path_equals_sdpa_oracle():
    attn = Attention(bert_cfg()).eval()
    x = torch.randn(B, T, C)
    mask = torch.ones(B, 1, 1, T, dtype=torch.bool)
    mask[0, ..., -3:] = False
    for causal in (False, True):
        fast, none = attn(x, mask=mask, causal=causal)
        slow, weights = attn(x, mask=mask, causal=causal, need_weights=True)
        assert none is None
        torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T))
    # Independent oracle: run SDPA on hand-split heads.
    q, k, v = attn.qkv(x).split(C, dim=-1)
    split = lambda t: t.view(B, T, H, C // H).transpose(1, 2)  # noqa: E731
    ref = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(B, T, C)
    torch.testing.assert_close(attn(x)[0], attn.proj(ref))


def test_attention_weights_respect_padding_and_causality():
    x = ids()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0
    bert = BertModel(bert_cfg()).eval()
    for w in bert(x, attention_mask=mask, output_attentions=True).attentions:
        assert torch.all(w[1, :, :, 4:] == 0)  # nobody looks at padding keys
    for w in GPT(gpt_cfg()).eval()(x, output_attentions=True).attentions:
        assert torch.all(w.triu(diagonal=1) == 0)  # nobody looks at the future


def test_gpt_is_causal():
    gpt = GPT(gpt_cfg()).eval()
    x = ids()
    base = gpt(x).logits
    for t in range(T - 1):
        changed = x.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % V
        out = gpt(changed).logits
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("arch", ["bert", "gpt"])
def test_padding_does_not_change_real_tokens(arch):
    model = (BertModel(bert_cfg()) if arch == "bert" else GPT(gpt_cfg())).eval()
    x = ids()
    padded = torch.cat([x, torch.zeros(B, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(B, T), torch.zeros(B, 4)], dim=1).long()
    plain, with_pad = model(x), model(padded, attention_mask=mask)
    torch.testing.assert_close(with_pad.hidden[:, :T], plain.hidden, atol=1e-5, rtol=1e-5)


def test_predict_at_gives_the_same_logits_at_masked_positions():
    model = BertForPreTraining(bert_cfg()).eval()
    x = ids()
    where = torch.rand(B, T) < 0.3
    where[0, 0] = True
    full = model(x).logits
    sparse = model(x, predict_at=where).logits
    assert sparse.shape == (int(where.sum()), V)
    torch.testing.assert_close(sparse, full[where])


def test_mlm_head_is_tied_to_input_embeddings():
    model = BertForPreTraining(bert_cfg())
    before = model(ids()).logits
    with torch.no_grad():
        model.bert.body.embed.tokens.weight.add_(1.0)
    assert not torch.allclose(model(ids()).logits, before)
    names = [n for n, _ in model.named_parameters()]
    assert sum("tokens.weight" in n for n in names) == 1


def test_segment_ids_matter_for_bert():
    model = BertModel(bert_cfg()).eval()
    x = ids()
    a = model(x, token_type_ids=torch.zeros_like(x)).hidden
    b = model(x, token_type_ids=torch.ones_like(x)).hidden
    assert not torch.allclose(a, b)


def test_generate_extends_and_greedy_is_deterministic():
    gpt = GPT(gpt_cfg()).eval()
    prompt = ids(b=2, t=3)
    out = gpt.generate(prompt, max_new_tokens=20, temperature=0)  # runs past max_len=16: context is cropped
    assert out.shape == (2, 23) and torch.equal(out[:, :3], prompt)
    assert torch.equal(out, gpt.generate(prompt, max_new_tokens=20, temperature=0))
    g = torch.Generator().manual_seed(1)
    sampled = gpt.generate(prompt, max_new_tokens=5, temperature=1.0, top_k=3, generator=g)
    assert sampled.shape == (2, 8)
    with pytest.raises(ValueError, match="temperature"):
        gpt.generate(prompt, max_new_tokens=1, temperature=-1)


def test_pre_ln_bert_has_a_final_norm_and_runs():
    model = BertForPreTraining(bert_cfg(norm_first=True))
    assert model.bert.body.final_norm is not None
    assert model(ids()).logits.shape == (B, T, V)


def test_presets_build_and_count_parameters():
    assert count_parameters(build_model(preset("tiny"))) < count_parameters(build_model(preset("mini")))
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        preset("huge")


def test_bad_config_messages_say_what_to_change():
    with pytest.raises(
        ValueError, match=r"Width 100 \(d_model\) is not divisible by 3 heads.*Pick heads from \[1, 2, 4, 5, 10\]"
    ):
        ModelConfig(d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="arch='t5'"):
        ModelConfig(arch="t5")
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.5)
    with pytest.raises(ValueError, match="Unknown ModelConfig fields"):
        ModelConfig.from_dict({"d_model": 64, "n_head": 2})


def test_bad_input_messages():
    model = BertModel(bert_cfg())
    with pytest.raises(ValueError, match="exceeds the model's max_len=16.*Truncate"):
        model(ids(t=17))
    with pytest.raises(ValueError, match="Token ids must be in"):
        model(torch.full((1, 3), V))
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="arch='bert'"):
        BertModel(gpt_cfg())
    with pytest.raises(ValueError, match="not available for GPT"):
        build_model(gpt_cfg(), task="classification")


def test_the_course_bert_recipe_is_the_shipped_course_bert_and_the_demos_model():
    from teachkit.config import course_bert_config
    from teachkit.course import course_bert
    from teachkit.experiments.pretraining import DemoSettings
    from teachkit.machinery.checkpoint import model_config

    shipped = model_config(course_bert())
    assert course_bert_config(vocab_size=shipped.vocab_size, max_len=shipped.max_len) == shipped
    s = DemoSettings()
    assert (s.layers, s.width, s.heads) == (shipped.n_layers, shipped.d_model, shipped.n_heads)
    small = course_bert_config(vocab_size=99, max_len=16, width=32, heads=2, pooling="mean")
    assert (small.d_ff, small.norm_first, small.dropout, small.pooling) == (128, True, 0.0, "mean")
