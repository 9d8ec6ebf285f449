"""Word vectors from counts: the pre-training of the word2vec era, done in seconds.

Count how often each token appears near each of the commonest tokens (up to `window` tokens away, nearer
counting more), turn the counts into positive pointwise mutual information (how much more often two
tokens meet than chance would have them meet), and keep the strongest `dim` directions of that table (a
truncated SVD). Tokens used alike get alike vectors: "funny" lands near "hilarious" and "witty". Levy and
Goldberg (2014) showed that word2vec's skip-gram factorises the same kind of table.

Why the demo uses them: masked-LM learns from only the masked 40% of the tokens, and in a few minutes
on a CPU it mostly learns which tokens are frequent, so a BERT pre-trained that briefly fine-tunes worse
than a random one. These vectors learn from every token in one pass over the corpus; a BERT whose token
embeddings start from them, then pre-trains with masked-LM, beats scratch after the same few minutes
(measure it with benchmarks/short_budget_search.py: its "word-vectors" recipe against "base").
"""

from __future__ import annotations

import torch

WINDOW = 4  # tokens on each side that count as "near"
CONTEXTS = 4096  # the commonest tokens, as contexts: enough for the meaning, small enough to be quick
SMOOTHING = 0.75  # context counts ** 0.75, as in word2vec: rare contexts get less extreme PMI
# A trained BERT's token embeddings spread wider than a fresh one's 0.02: the course BERT's std is 0.127.
# At 0.02 the vectors are drowned by the position embeddings and gave nothing in a paired test at 1,000 labels.
EMBEDDING_STD = 0.12


def cooccurrence_counts(rows: torch.Tensor, vocab_size: int, *, window=WINDOW, contexts=CONTEXTS):
    """(vocab_size, contexts) counts of each token next to each of the `contexts` commonest, weighted 1/distance."""
    top = torch.bincount(rows.flatten().long(), minlength=vocab_size).argsort(descending=True)[:contexts]
    column = torch.full((vocab_size,), -1, dtype=torch.long)
    column[top] = torch.arange(len(top))
    counts = torch.zeros(vocab_size * len(top))
    for start in range(0, len(rows), 8192):  # a slice of rows at a time keeps the index tensors small
        part = rows[start : start + 8192].long()
        for d in range(1, window + 1):
            for word, near in ((part[:, :-d], part[:, d:]), (part[:, d:], part[:, :-d])):  # right, then left
                c = column[near]
                seen = c >= 0
                at = word[seen] * len(top) + c[seen]
                counts.index_add_(0, at, torch.full((len(at),), 1.0 / d))
    return counts.view(vocab_size, len(top))


def ppmi(counts: torch.Tensor, *, smoothing=SMOOTHING) -> torch.Tensor:
    """Positive pointwise mutual information: max(0, log p(word, context) / (p(word) p(context)))."""
    total = counts.sum()
    p_word = counts.sum(1, keepdim=True) / total
    p_context = counts.sum(0, keepdim=True) ** smoothing
    p_context = p_context / p_context.sum()
    pmi = (counts / total).div_((p_word * p_context).clamp_min(1e-30)).log_()  # log 0 = -inf, clamped to 0 next
    return pmi.clamp_min_(0).nan_to_num_(0.0)  # in place: the table is the size of the vocabulary x contexts


def word_vectors(rows: torch.Tensor, vocab_size: int, dim: int) -> torch.Tensor:
    """A `dim`-long vector for every token id, from the corpus `rows` (token ids, one text or more per row)."""
    u, s, _ = torch.svd_lowrank(ppmi(cooccurrence_counts(rows, vocab_size)), q=dim, niter=4)
    return u * s.sqrt()  # the symmetric split of the SVD: better word similarities than u * s (Levy et al., 2015)


def start_from(model, vectors: torch.Tensor, *, std: float = EMBEDDING_STD) -> None:
    """Set the model's token embeddings to `vectors`, centred and scaled to `std`."""
    table = model.bert.body.embed.tokens.weight
    if vectors.shape != table.shape:
        raise ValueError(f"{tuple(vectors.shape)} word vectors do not fit a {tuple(table.shape)} token embedding.")
    centred = vectors - vectors.mean(0)
    with torch.no_grad():
        table.copy_(centred / centred.std() * std)
