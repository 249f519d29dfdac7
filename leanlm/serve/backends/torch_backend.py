"""The torch backend: any model ``leanlm.load`` loads (spec, compressed artifact, generation directory),
decoded in batches through one left-padded ``DynamicCache``.

Prefix caching (as vLLM's automatic prefix caching and llama.cpp's ``cache_prompt`` do): when a prompt
shares at least ``PREFIX_MIN`` leading tokens with the previous prompt (a chat template's system preamble,
a few-shot header), the keys and values of that shared prefix are kept (``prefix_cache`` entries, least
recently used dropped); a later batch whose prompts all start with a kept prefix prefills only the rest.
Rows then read ``[prefix][padding][suffix]``: the padding sits between prefix and suffix, masked, and the
positions count real tokens, so the model sees what it would see without the cache (up to float rounding
of differently shaped matrix products).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from . import kvcache
from . import skinny as skinny_kernel
from .base import TextCodec


@dataclass
class TorchState:
    cache: object                 # transformers DynamicCache, (B, H, T, D) per layer
    mask: torch.Tensor            # (B, T) long, 0 on left padding
    lengths: torch.Tensor         # (B,) real tokens per row = position of the next token


PREFIX_MIN = 16   # shortest shared prefix worth keeping, in tokens


class TorchBackend:
    name = "torch"

    def __init__(self, model, tok, max_batch: int = 16, prefix_cache: int = 4, skinny: bool = True):
        self.model = model
        self.skinny_layers = skinny_kernel.patch(model) if skinny else 0   # fp32 linears on the batched kernel
        self.prefix_cache = prefix_cache
        self._prefixes: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._last: list[int] | None = None
        self.prefix_hits = 0          # prompts prefilled from a kept prefix (the tests read it)
        self.device = next(model.parameters()).device
        self.max_batch = max_batch
        self.context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.text = TextCodec.of(tok, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    def _kept_prefix(self, prompts: list[list[int]]) -> tuple[int, ...] | None:
        """The longest kept prefix every prompt starts with and extends."""
        best = None
        for key in self._prefixes:
            n = len(key)
            if (best is None or n > len(best)) and all(len(p) > n and tuple(p[:n]) == key for p in prompts):
                best = key
        return best

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> tuple[TorchState, torch.Tensor]:
        key = self._kept_prefix(prompts) if self.prefix_cache else None
        state, logits = self._prefill_after(prompts, key) if key else self._prefill_plain(prompts)
        if self.prefix_cache and key is None:
            self._learn(prompts, state)
        return state, logits

    def _learn(self, prompts: list[list[int]], state: TorchState) -> None:
        """Keep the prefix a prompt shares with the one before it (sliced from this plain prefill's cache)."""
        width = state.mask.shape[1]
        for i, p in enumerate(prompts):
            last, self._last = self._last, p
            if last is None:
                continue
            n = 0
            for a, b in zip(p, last):
                if a != b:
                    break
                n += 1
            n = min(n, len(p) - 1)
            if n < PREFIX_MIN or tuple(p[:n]) in self._prefixes:
                continue
            start = width - len(p)                       # left padding of row i
            self._prefixes[tuple(p[:n])] = [(layer.keys[i:i + 1, :, start:start + n].clone(),
                                             layer.values[i:i + 1, :, start:start + n].clone())
                                            for layer in kvcache.layers_of(state.cache)]
            while len(self._prefixes) > self.prefix_cache:
                self._prefixes.popitem(last=False)

    def _prefill_after(self, prompts: list[list[int]], key: tuple[int, ...]) -> tuple[TorchState, torch.Tensor]:
        from transformers import DynamicCache

        self._prefixes.move_to_end(key)
        n, b = len(key), len(prompts)
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(self._prefixes[key]):
            cache.update(k.expand(b, -1, -1, -1).contiguous(), v.expand(b, -1, -1, -1).contiguous(), i)
        self.prefix_hits += b
        return self._forward(cache, n, [p[n:] for p in prompts])

    def _prefill_plain(self, prompts: list[list[int]]) -> tuple[TorchState, torch.Tensor]:
        from transformers import DynamicCache

        return self._forward(DynamicCache(config=self.model.config), 0, prompts)

    def _forward(self, cache, start: int, seqs: list[list[int]]) -> tuple[TorchState, torch.Tensor]:
        """Run ``seqs`` (left-padded: every one ends at the last column) after the ``start`` tokens every row
        of ``cache`` already holds; the new state and each row's next-token logits."""
        b, width = len(seqs), max(len(q) for q in seqs)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        new = torch.zeros((b, width), dtype=torch.long)
        for i, q in enumerate(seqs):
            ids[i, width - len(q):] = torch.tensor(q, dtype=torch.long)
            new[i, width - len(q):] = 1
        mask = torch.cat([torch.ones((b, start), dtype=torch.long), new], dim=1)
        pos = start + (new.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=pos.to(self.device), cache=cache, use_cache=True, logits_to_keep=1)
        return TorchState(cache, mask, mask.sum(1)), out.logits[:, -1, :].float().cpu()

    @torch.no_grad()
    def step(self, state: TorchState, tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor(tokens, dtype=torch.long)[:, None]
        state.mask = torch.cat([state.mask, torch.ones((len(tokens), 1), dtype=torch.long)], dim=1)
        out = self.model(input_ids=ids.to(self.device), attention_mask=state.mask.to(self.device),
                         position_ids=state.lengths[:, None].to(self.device), cache=state.cache, use_cache=True)
        state.lengths = state.lengths + 1
        return out.logits[:, -1, :].float().cpu()

    def select(self, state: TorchState, rows: list[int]) -> TorchState:
        mask = kvcache.select_rows(state.cache, state.mask, rows)
        return TorchState(state.cache, mask, state.lengths[torch.tensor(rows, dtype=torch.long)])

    def join(self, a: TorchState, b: TorchState) -> TorchState:
        mask = kvcache.join(a.cache, a.mask, b.cache, b.mask)
        return TorchState(a.cache, mask, torch.cat([a.lengths, b.lengths]))

    def close(self) -> None:
        self.model = None


def load_torch(source: str, dtype: str = "bf16", max_batch: int = 16, prefix_cache: int = 4, skinny: bool = True,
               **_) -> TorchBackend:
    from ...models.load import load

    model, tok = load(source, dtype=dtype, device="cpu")
    return TorchBackend(model, tok, max_batch=max_batch, prefix_cache=prefix_cache, skinny=skinny)
