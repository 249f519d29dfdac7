"""The torch backend's batched decode against one forward pass per sequence, and the sampling math."""
import pytest
import torch

from leanlm.serve.backends.torch_backend import TorchBackend
from leanlm.serve.sampling import sample, top_p_filter


@pytest.fixture(scope="module")
def backend(tiny):
    model, tok = tiny
    return TorchBackend(model, tok, max_batch=8)


def _reference(backend, ids: list[int]) -> torch.Tensor:
    """Next-token logits of one unpadded sequence, no cache: the naive reference."""
    with torch.no_grad():
        return backend.model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def _check_then_step(backend, state, logits, seqs, gen) -> torch.Tensor:
    """Every row's logits equal the reference; then one random token per row is decoded (appended to seqs)."""
    for row, ids in enumerate(seqs):
        torch.testing.assert_close(logits[row], _reference(backend, ids), rtol=1e-4, atol=1e-4)
    tokens = [int(torch.randint(3, 90, (1,), generator=gen)) for _ in seqs]
    logits = backend.step(state, tokens)
    for ids, t in zip(seqs, tokens):
        ids.append(t)
    return logits


def test_batched_decode_matches_one_sequence_at_a_time(backend):
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 90, (n,), generator=gen).tolist() for n in (5, 17, 9)]
    state, logits = backend.prefill(prompts[:2])               # two rows of different lengths, left padded
    seqs = [list(p) for p in prompts[:2]]
    for step in range(6):
        if step == 2:                                           # a third request joins mid-flight
            s3, l3 = backend.prefill([prompts[2]])
            state, logits = backend.join(state, s3), torch.cat([logits, l3])
            seqs.append(list(prompts[2]))
        if step == 4:                                           # the first leaves; the 17-token one stays
            state, logits, seqs = backend.select(state, [1, 2]), logits[[1, 2]], seqs[1:]
        logits = _check_then_step(backend, state, logits, seqs, gen)
    for row, ids in enumerate(seqs):
        torch.testing.assert_close(logits[row], _reference(backend, ids), rtol=1e-4, atol=1e-4)


def test_prefix_cache_prefills_the_rest_and_matches_the_reference(tiny):
    """A prompt sharing >= 16 tokens with the one before keeps that prefix's keys and values; a later batch
    of prompts starting with it prefills only their rest (rows [prefix][padding][suffix]) and every logit,
    after joins, selects and decode steps, matches one unpadded uncached forward pass."""
    model, tok = tiny
    b = TorchBackend(model, tok, max_batch=8, prefix_cache=2)
    gen = torch.Generator().manual_seed(3)
    head = torch.randint(3, 90, (20,), generator=gen).tolist()
    firsts = iter(range(3, 13))                                 # every tail starts with its own token

    def tail(n: int) -> list[int]:
        return [next(firsts)] + torch.randint(3, 90, (n - 1,), generator=gen).tolist()

    b.prefill([head + tail(4)])
    b.prefill([head + tail(6)])                                 # shares the 20-token head: kept
    assert b.prefix_hits == 0 and [len(k) for k in b._prefixes] == [20]
    prompts = [head + tail(3), head + tail(9)]
    state, logits = b.prefill(prompts)
    assert b.prefix_hits == 2 and state.mask.shape[1] == 29 and int(state.mask[0].sum()) == 23
    seqs = [list(p) for p in prompts]
    other, lo = b.prefill([tail(7)])                            # no kept prefix: the plain path, then joined
    state, logits = b.join(state, other), torch.cat([logits, lo])
    seqs.append(list(b._last))
    for step in range(4):
        if step == 2:
            state, logits, seqs = b.select(state, [1, 2]), logits[[1, 2]], seqs[1:]
        logits = _check_then_step(b, state, logits, seqs, gen)
    off = TorchBackend(model, tok, max_batch=8, prefix_cache=0)
    off.prefill([head + tail(4)])
    off.prefill([head + tail(6)])
    assert not off._prefixes and off.prefix_hits == 0


def test_select_repeats_rows_for_n_choices(backend):
    state, logits = backend.prefill([[5, 6, 7, 8]])
    state = backend.select(state, [0, 0, 0])
    out = backend.step(state, [9, 10, 11])
    for row, t in enumerate([9, 10, 11]):
        torch.testing.assert_close(out[row], _reference(backend, [5, 6, 7, 8, t]), rtol=1e-4, atol=1e-4)


def test_select_trims_shared_padding(backend):
    state, _ = backend.prefill([[5, 6], list(range(5, 25))])
    assert state.mask.shape[1] == 20
    state = backend.select(state, [0])
    assert state.mask.shape[1] == 2 and state.mask.all()
    assert all(layer.keys.shape[2] == 2 for layer in state.cache.layers)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert torch.equal(top_p_filter(probs, 0.7) > 0, torch.tensor([True, True, False, False]))
    assert torch.equal(top_p_filter(probs, 0.5) > 0, torch.tensor([True, False, False, False]))
    torch.testing.assert_close(top_p_filter(probs, 0.9).sum(), torch.tensor(1.0))
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def test_sampling_is_per_row_reproducible_and_greedy_rows_argmax():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = sample(logits, [0.0, 1.0, 1.0], [1.0, 0.9, 1.0], [None, g(7), g(8)])
    b = sample(logits[1:2], [1.0], [0.9], [g(7)])              # row 1 alone, same seed: same token
    assert a[0] == int(logits[0].argmax()) and a[1] == b[0]
    draws = [sample(logits[:1], [1.0], [1.0], [g(s)])[0] for s in range(400)]
    freq = torch.bincount(torch.tensor(draws), minlength=50).float() / 400
    # the empirical distribution follows softmax (total variation well under the ~0.3 of 400 draws' noise)
    assert 0.5 * (freq - torch.softmax(logits[0], -1)).abs().sum() < 0.3
