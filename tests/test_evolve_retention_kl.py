"""The KL retention loss (``TrainConfig.retention_kl``): zero at the reference, positive away from it, and
training on it pulls a perturbed adapter back toward the reference on the retention text."""
from __future__ import annotations

import pytest
import torch

from leanlm.config import ConfigError
from leanlm.evolve.config import EvolveConfig
from leanlm.evolve.train import Example, TrainConfig, add_lora, batches, kl_retention_loss, lm_loss, train


def _tiny():
    from leanlm.models.load import load

    model, tok = load("tiny-llama")
    return model.float(), tok


TEXT = [Example("", "the quick brown fox jumps over the lazy dog " * 2), Example("", "12+34=46 and 5+6=11")]


def test_kl_retention_is_zero_at_the_reference_and_positive_away_from_it():
    model, tok = _tiny()
    model = add_lora(model, TrainConfig(lora_r=4, retention_kl=True))
    batch = next(batches(tok, TEXT * 2, 4, 0))
    assert kl_retention_loss(model, batch).item() == pytest.approx(0.0, abs=1e-6)   # LoRA B starts at zero
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    moved = kl_retention_loss(model, batch).item()
    assert moved > 1e-3
    n_tokens = int((batch["labels"][:, 1:] != -100).sum())
    parts = [kl_retention_loss(model, {k: v[j::2] for k, v in batch.items()}, n_tokens).item() for j in (0, 1)]
    assert sum(parts) == pytest.approx(moved, rel=1e-5)   # parts' sums over the batch's count add to its mean
    assert lm_loss(model, batch).item() > 0


def test_training_with_kl_retention_stays_nearer_the_reference():
    new = [Example("Q: 1+1=", "2 and then some more words"), Example("Q: 2+2=", "4 or so I hear")] * 2
    kls = {}
    for arm, kw in (("kl", dict(retention_kl=True)), ("none", dict(retention_weight=0.0))):
        model, tok = _tiny()
        cfg = TrainConfig(steps=40, batch_size=4, lr=5e-3, lora_r=4, seed=0, warmup=1, surgery=False, **kw)
        model = add_lora(model, cfg)
        train(model, tok, new, TEXT * 2, cfg, progress=False)
        kls[arm] = kl_retention_loss(model, next(batches(tok, TEXT * 2, 4, 0))).item()
    assert kls["none"] > 0.01 and kls["kl"] < 0.5 * kls["none"], kls


def test_retention_kl_needs_lora():
    with pytest.raises(ConfigError, match="LoRA"):
        TrainConfig(lora_r=0, retention_kl=True)
    with pytest.raises(ConfigError, match="lora-r"):
        EvolveConfig(lora_r=0, retention_kl=True)


def test_retention_windows_can_come_from_several_corpora():
    from leanlm.eval.corpus import load_corpus, split_corpus
    from leanlm.evolve.loop import corpus_examples

    _, tok = _tiny()
    plain = corpus_examples(tok, 3, n=10, seq_len=16)
    assert plain == corpus_examples(tok, 3, n=10, seq_len=16, corpora="pydoc")   # '' is the default corpus
    mixed = corpus_examples(tok, 3, n=10, seq_len=16, corpora="pydoc, fortunes")
    assert len(mixed) == 10 and mixed[:5] == plain[:5]
    fortunes = split_corpus(load_corpus("fortunes"), "calib")
    assert all(e.completion.strip()[:8] in fortunes for e in mixed[5:])
    with pytest.raises(ConfigError, match="unknown corpus"):
        EvolveConfig(retention_corpus="pydoc,nope")
