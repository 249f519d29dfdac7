"""The torch backend: any model ``leanlm.load`` loads (spec, compressed artifact, generation directory),
decoded in batches through one left-padded ``DynamicCache``."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import kvcache
from .base import TextCodec


@dataclass
class TorchState:
    cache: object                 # transformers DynamicCache, (B, H, T, D) per layer
    mask: torch.Tensor            # (B, T) long, 0 on left padding
    lengths: torch.Tensor         # (B,) real tokens per row = position of the next token


class TorchBackend:
    name = "torch"

    def __init__(self, model, tok, max_batch: int = 16):
        self.model = model
        self.device = next(model.parameters()).device
        self.max_batch = max_batch
        self.context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.text = TextCodec.of(tok, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> tuple[TorchState, torch.Tensor]:
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):                 # left padding: every prompt ends at the last column
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
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


def load_torch(source: str, dtype: str = "bf16", max_batch: int = 16, **_) -> TorchBackend:
    from ...models.load import load

    model, tok = load(source, dtype=dtype, device="cpu")
    return TorchBackend(model, tok, max_batch=max_batch)
