"""The benchmark's PyTorch reference: the same GPT and training loop as ``jaxllm``, in eager
PyTorch, written to be as fast as eager PyTorch gets on a CPU.

Same architecture as :class:`jaxllm.model.GPT` with a ``gelu``/``layernorm``/``learned``
config: token and position embeddings, pre-norm blocks (LayerNorm, one fused
query/key/value projection, causal attention, output projection, a 4x MLP with tanh-GELU),
a final LayerNorm and an LM head tied to the token embedding; no biases by default, as in
nanoGPT's runs (``bias = False`` in its ``train.py``). Same initialisation
distribution (normal, std 0.02; residual output projections 0.02 / sqrt(2 L); zero biases;
LayerNorm scale 1), same optimiser (global-norm clipping, then AdamW with decay on tensors of
rank >= 2, linear warmup and cosine decay). What makes it fast in eager mode:

* ``F.scaled_dot_product_attention(is_causal=True)``: one fused kernel for the attention;
* ``torch.optim.AdamW(fused=True)`` where the build supports it on CPU, else ``foreach``;
* ``torch.nn.utils.clip_grad_norm_(foreach=True)``;
* ``set_to_none`` gradients, no anomaly detection, ``torch.inference_mode`` for evaluation,
  intra-op threads set to the number of cores.

Only NumPy and PyTorch are imported here (no JAX), so it can run in its own process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TorchGPTConfig:
    vocab_size: int
    context_length: int
    n_layer: int
    n_head: int
    d_model: int
    init_std: float = 0.02
    norm_eps: float = 1e-5
    bias: bool = False  # nanoGPT's default (train.py: bias = False)


class Block(nn.Module):
    def __init__(self, cfg: TorchGPTConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        b = cfg.bias
        self.ln1 = nn.LayerNorm(d, eps=cfg.norm_eps, bias=b)
        self.qkv = nn.Linear(d, 3 * d, bias=b)
        self.attn_proj = nn.Linear(d, d, bias=b)
        self.ln2 = nn.LayerNorm(d, eps=cfg.norm_eps, bias=b)
        self.fc = nn.Linear(d, 4 * d, bias=b)
        self.mlp_proj = nn.Linear(4 * d, d, bias=b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        # [B, T, C] -> [B, H, T, hd], the layout scaled_dot_product_attention expects.
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, cfg: TorchGPTConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context_length, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        g = torch.Generator().manual_seed(seed)
        std, resid_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layer)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif ".ln" in name or name.startswith("ln_"):
                    p.fill_(1.0)
                else:
                    s = resid_std if name.endswith(("attn_proj.weight", "mlp_proj.weight")) \
                        else std
                    p.normal_(0.0, s, generator=g)
        self.register_buffer("pos", torch.arange(cfg.context_length), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(self.pos[:T])
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # LM head tied to the embedding


def make_optimizer(model: nn.Module, lr: float, betas: tuple[float, float],
                   weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices and embeddings only (rank >= 2)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    try:  # fused AdamW on CPU exists in recent PyTorch builds
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        opt.fused_kind = "fused"  # type: ignore[attr-defined]
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)
        opt.fused_kind = "foreach"  # type: ignore[attr-defined]
    return opt


def lr_at(step: int, peak: float, final: float, warmup: int, total: int) -> float:
    """Linear warmup from 0, then cosine to ``final`` at ``total`` (as Optax's
    ``warmup_cosine_decay_schedule``, which jaxllm uses)."""
    if step < warmup:
        return peak * step / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * frac))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               lr: float, grad_clip: float) -> torch.Tensor:
    for group in opt.param_groups:
        group["lr"] = lr
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


@torch.inference_mode()
def evaluate(model: nn.Module, windows: torch.Tensor, batch: int = 64) -> float:
    """Mean next-token loss over ``windows`` ``[N, T + 1]`` (every token counted once)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i: i + batch]
        logits = model(w[:, :-1])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += w[:, 1:].numel()
    model.train()
    return total / count
