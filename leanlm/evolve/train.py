"""Training steps: supervised fine-tuning on verified answers (STaR / ReST-EM), with a retention loss,
PCGrad between the two, optional LoRA (peft), and the DPO loss for preference pairs.

Every run is seeded from its config, so a generation retrained after a resume makes the same updates.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import require
from . import dist
from .surgery import combine

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One SFT example: ``prompt`` exactly as the model sees it at generation time, then ``completion``."""
    prompt: str
    completion: str


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    surgery: bool = True            # PCGrad between new-data and retention gradients
    retention_weight: float = 1.0   # weight of the retention loss (0 = no retention term)
    retention_kl: bool = False      # retention = KL(model before training || model), not the LM loss (LoRA)
    micro_batches: int = 1          # gradient parts per batch (accumulated; split across processes under DP)
    lora_r: int = 0                 # 0 = full fine-tuning
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"))
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.steps >= 0 and self.batch_size >= 1, "steps >= 0 and batch_size >= 1")
        require(self.lr > 0 and 0 <= self.warmup, "lr > 0 and warmup >= 0")
        require(self.lora_r >= 0 and self.retention_weight >= 0, "lora_r and retention_weight must be >= 0")
        require(self.micro_batches >= 1, "micro_batches must be >= 1")
        require(not self.retention_kl or self.lora_r > 0, "retention_kl needs LoRA (lora_r > 0): the reference "
                "is the model with its adapters switched off")


# ----------------------------------------------------------------------------------- data
def encode(tok, ex: Example, max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(input ids, labels): prompt and completion tokenised apart (no merge across the boundary); the
    loss covers the completion and the end-of-sequence token only."""
    p = tok(ex.prompt, add_special_tokens=False)["input_ids"]
    c = tok(ex.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids, labels = p + c, [IGNORE] * len(p) + c
    if max_len is not None:
        ids, labels = ids[-max_len:], labels[-max_len:]
    return ids, labels


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels, each (B, T)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(tok, examples: list[Example], batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches (a fresh seeded permutation per epoch)."""
    if not examples:
        raise ValueError("no training examples")
    rows = [encode(tok, e) for e in examples]
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(rows), generator=g).tolist()
        for i in range(0, len(perm) - (len(perm) % batch_size if len(perm) >= batch_size else 0), batch_size):
            chunk = perm[i:i + batch_size]
            if chunk:
                yield collate([rows[j] for j in chunk], tok.pad_token_id)


def lm_loss(model, batch: dict[str, torch.Tensor], n_tokens: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens (position t predicts t+1), or their sum over ``n_tokens``
    (a data-parallel shard's part of its global batch's mean). The output head runs only from the first
    position that predicts a labelled token on (``logits_to_keep``): for prompt + answer examples that
    skips the prompt, and with it most of a large vocabulary's matmul and its gradient."""
    targets = batch["labels"][:, 1:]
    cols = (targets != IGNORE).any(0).nonzero().flatten()
    first = int(cols[0]) if len(cols) else 0
    keep = torch.arange(first, targets.shape[1])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets[:, first:].flatten(), ignore_index=IGNORE,
                           reduction="mean" if n_tokens is None else "sum")
    return loss if n_tokens is None else loss / max(1, n_tokens)


def kl_retention_loss(model, batch: dict[str, torch.Tensor], n_tokens: int | None = None) -> torch.Tensor:
    """KL(reference || model) at every position that predicts a labelled token, mean (or sum over
    ``n_tokens``, as ``lm_loss``). The reference is ``model`` with its LoRA adapters off (peft's
    ``disable_adapter``): the weights before this training, with no second copy in memory. As a retention
    term it keeps the whole next-token distribution on the retention text where it was, where the LM loss
    on the same text pulls the model toward that corpus (lower perplexity there, higher elsewhere)."""
    valid = batch["labels"][:, 1:] != IGNORE
    with torch.no_grad(), model.disable_adapter():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        ref = ref.float().log_softmax(-1)
    cur = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    kl = (ref.exp() * (ref - cur.float().log_softmax(-1))).sum(-1)
    total = (kl * valid).sum()
    return total / valid.sum().clamp(min=1) if n_tokens is None else total / max(1, n_tokens)


# ----------------------------------------------------------------------------------- DPO
def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), mean over pairs.
    Inputs are summed completion log-probabilities, shape (B,)."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def sequence_logprob(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens, shape (B,)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * (labels != IGNORE)).sum(-1)


# ----------------------------------------------------------------------------------- LoRA
def add_lora(model, cfg: TrainConfig):
    """Wrap ``model`` with fresh LoRA adapters (seeded); returns the peft model."""
    from peft import LoraConfig, get_peft_model

    from ..models.load import MODEL_BUILD_LOCK

    torch.manual_seed(cfg.seed)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")
    with MODEL_BUILD_LOCK:   # new modules initialised while no other thread has torch.nn.init patched
        return get_peft_model(model, lcfg)


# ----------------------------------------------------------------------------------- loop
def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])


def _assign_grad(flat: torch.Tensor, params: list[torch.Tensor]) -> None:
    i = 0
    for p in params:
        n = p.numel()
        p.grad = flat[i:i + n].view_as(p).to(p.dtype)
        i += n


def loss_and_grad(model, batch: dict[str, torch.Tensor], params: list[torch.Tensor], parts: int = 1,
                  loss_fn=lm_loss):
    """(mean loss, flat gradient) of a global batch, computed in ``P`` row-strided parts (rows ``j::P``)
    whose gradients are summed: ``P = parts`` in one process (gradient accumulation: less memory per
    step), rounded up to a multiple of the process count under data parallelism, where each process
    computes its parts and the sums are all-reduced (``dist``). Each part's loss is its labelled tokens'
    sum over the whole batch's count, so the total is the whole batch's mean and its gradient, and one
    process with ``parts=N`` makes exactly the updates of N processes."""
    w = dist.world()
    P = w.size * -(-max(1, parts) // w.size)
    if P == 1:
        loss = loss_fn(model, batch)
        return loss.detach(), _flat_grad(loss, params)
    n_tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
    g = torch.zeros(sum(p.numel() for p in params))
    loss = torch.zeros(1)
    for j in range(w.rank, min(P, len(batch["input_ids"])), w.size):   # fewer rows than parts: some add nothing
        part_loss = loss_fn(model, {k: v[j::P] for k, v in batch.items()}, n_tokens)
        g += _flat_grad(part_loss, params)
        loss += part_loss.detach().float()
    dist.all_reduce_sum(g)
    dist.all_reduce_sum(loss)
    return loss[0], g


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of ``cfg.lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train(model, tok, new: list[Example], retention: list[Example] | None, cfg: TrainConfig,
          progress: bool = True, desc: str = "train") -> dict:
    """``cfg.steps`` AdamW steps on ``new`` (+ retention with optional PCGrad). Trains the parameters that
    require grad (all of them, or the LoRA adapters). Returns per-step losses and surgery statistics."""
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    it_new = batches(tok, new, cfg.batch_size, cfg.seed)
    use_ret = bool(retention) and cfg.retention_weight > 0
    it_ret = batches(tok, retention, cfg.batch_size, cfg.seed + 1) if use_ret else None
    model.train()
    hist: dict = {"loss_new": [], "loss_ret": [], "conflicts": 0, "cosines": []}
    bar = tqdm(range(cfg.steps), desc=desc, unit="step", disable=not progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss_new, g_new = loss_and_grad(model, next(it_new), params, cfg.micro_batches)
        g_ret, loss_ret = None, None
        if it_ret is not None:
            loss_ret, g_ret = loss_and_grad(model, next(it_ret), params, cfg.micro_batches,
                                            kl_retention_loss if cfg.retention_kl else lm_loss)
        g, info = combine(g_new, g_ret, cfg.surgery, cfg.retention_weight)
        norm = float(g.norm())
        if cfg.grad_clip and norm > cfg.grad_clip:
            g = g * (cfg.grad_clip / norm)
        _assign_grad(g, params)
        opt.step()
        opt.zero_grad(set_to_none=True)
        hist["loss_new"].append(round(loss_new.item(), 5))
        if info is not None:
            hist["loss_ret"].append(round(loss_ret.item(), 5))
            hist["cosines"].append(round(info.cosine, 4))
            hist["conflicts"] += info.dot < 0
        bar.set_postfix(loss=f"{loss_new.item():.3f}")
    model.eval()
    return hist


def train_dpo(model, tok, pairs: list[dict], steps: int, lr: float, beta: float = 0.1, batch_size: int = 4,
              seed: int = 0, progress: bool = True) -> dict:
    """DPO on (prompt, chosen, rejected) pairs. The reference is the model as it is before these steps:
    its log-probabilities are computed once up front, so this works for LoRA and full fine-tuning alike.
    Returns per-step losses and the mean chosen-minus-rejected log-prob margin before and after."""
    if not pairs:
        raise ValueError("DPO needs at least one preference pair")
    chosen = [encode(tok, Example(p["prompt"], p["chosen"])) for p in pairs]
    rejected = [encode(tok, Example(p["prompt"], p["rejected"])) for p in pairs]

    def logps(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return (sequence_logprob(model, collate([chosen[i] for i in idx], tok.pad_token_id)),
                sequence_logprob(model, collate([rejected[i] for i in idx], tok.pad_token_id)))

    model.eval()
    with torch.no_grad():
        ref_c, ref_r = logps(list(range(len(pairs))))
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="dpo", unit="step", disable=not progress, leave=False):
        idx = torch.randint(0, len(pairs), (min(batch_size, len(pairs)),), generator=g).tolist()
        pc, pr = logps(idx)
        loss = dpo_loss(pc, pr, ref_c[idx], ref_r[idx], beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 5))
    model.eval()
    with torch.no_grad():
        post_c, post_r = logps(list(range(len(pairs))))
    return {"loss": losses, "margin_before": float((ref_c - ref_r).mean()),
            "margin_after": float((post_c - post_r).mean())}
