import math

import numpy as np
import pytest
import torch

from leanlm.eval.perplexity import perplexity, windows


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token distribution is a fixed table row per current token (a bigram model)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, use_cache=False):
        return type("Out", (), {"logits": self.table[input_ids]})()


@pytest.mark.parametrize("n,context,stride", [(10, 4, 4), (10, 4, 2), (17, 5, 3), (2, 512, 512), (9, 9, 1)])
def test_positions_scored_at_most_once(n, context, stride):
    wins = windows(n, context, stride)
    scored = sorted(t for s, e, first in wins for t in range(first, e))
    assert len(scored) == len(set(scored)) and all(e - s <= context for s, e, _ in wins)
    if stride < context:  # overlapping windows: every token after the first is scored
        assert scored == list(range(1, n))
    else:                 # disjoint windows: each window's first token is context only
        assert scored == [t for t in range(1, n) if t % context != 0]


def test_uniform_model_perplexity_equals_vocab_size():
    model = FixedLogits(torch.zeros(7, 7))
    r = perplexity(model, torch.randint(0, 7, (50,)), context=8, stride=8, progress=False)
    assert r.perplexity == pytest.approx(7.0, rel=1e-6) and (r.tokens_scored, r.windows) == (43, 7)


def test_bigram_perplexity_matches_hand_computation():
    # Token 0 -> next is 1 with p=0.75 (else 0, 0.25); token 1 -> 0 with p=0.5. Sequence 0 1 0 1 0.
    p = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    model = FixedLogits(p.log())
    r = perplexity(model, torch.tensor([0, 1, 0, 1, 0]), context=3, stride=2, progress=False)
    hand = math.exp(-(math.log(0.75) + math.log(0.5) + math.log(0.75) + math.log(0.5)) / 4)
    assert r.perplexity == pytest.approx(hand, rel=1e-6)  # float32 log-softmax


def test_tiny_llama_matches_naive_float64_reference(tiny):
    model, _ = tiny
    ids = torch.randint(3, 90, (100,), generator=torch.Generator().manual_seed(0))
    r = perplexity(model, ids, context=32, stride=16, batch_size=3, progress=False)
    nll = []
    torch.set_grad_enabled(False)
    for s, e, first in windows(100, 32, 16):
        logits = model(input_ids=ids[None, s:e]).logits[0].double().numpy()
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        nll += [-logp[t - s - 1, ids[t]] for t in range(first, e)]
    torch.set_grad_enabled(True)
    assert r.perplexity == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
