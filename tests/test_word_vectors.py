"""Word vectors from counts: tokens used alike get alike vectors, and the demo's BERT starts from them."""

import torch

from teachkit.config import preset
from teachkit.experiments import word_vectors
from teachkit.model import build_model


def toy_rows(n=400, seed=0):
    """Rows where tokens 10-11 share one set of neighbours (20-24) and 12-13 another (30-34)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        pair = torch.randint(0, 2, (), generator=g).item()
        word = 10 + 2 * pair + torch.randint(0, 2, (), generator=g).item()
        near = (20 if pair == 0 else 30) + torch.randint(0, 5, (4,), generator=g)
        rows.append(torch.cat([near[:2], torch.tensor([word]), near[2:]]))
    return torch.stack(rows)


def test_cooccurrence_counts_weigh_nearer_tokens_more():
    counts = word_vectors.cooccurrence_counts(torch.tensor([[1, 2, 3]]), 4, window=2, contexts=4)
    column = {
        int(t): i for i, t in enumerate(torch.bincount(torch.tensor([1, 2, 3]), minlength=4).argsort(descending=True))
    }
    assert counts[1, column[2]] == 1.0 and counts[1, column[3]] == 0.5  # distance 1, then 2
    assert counts[2, column[1]] == 1.0 and counts[2, column[3]] == 1.0
    assert counts[0].sum() == 0  # token 0 never appears


def test_tokens_with_the_same_neighbours_get_similar_vectors():
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(word_vectors.word_vectors(toy_rows(), 40, 4), dim=1)
    same, other = float(v[10] @ v[11]), float(v[10] @ v[12])
    assert same > 0.9 and other < 0.5, (same, other)


def test_ppmi_is_never_negative_nor_nan():
    counts = torch.tensor([[4.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
    p = word_vectors.ppmi(counts)
    assert torch.isfinite(p).all() and (p >= 0).all() and p[1].sum() == 0


def test_start_from_sets_the_token_embeddings_and_refuses_a_wrong_shape():
    model = build_model(preset("tiny"))
    vectors = torch.randn(2048, 64) * 5 + 3
    word_vectors.start_from(model, vectors, std=0.12)
    table = model.bert.body.embed.tokens.weight.detach()
    assert abs(float(table.std()) - 0.12) < 1e-3 and float(table.mean(0).abs().max()) < 1e-4
    try:
        word_vectors.start_from(model, torch.randn(100, 64))
    except ValueError as err:
        assert "(100, 64)" in str(err) and "(2048, 64)" in str(err)
    else:
        raise AssertionError("a wrong shape was accepted")
