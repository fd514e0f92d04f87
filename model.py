"""
The GPT model: GPT-2 by default, and the architecture variants of --arch as branches on config fields.

    from model import GPT, GPTConfig
    model = GPT(GPTConfig.preset("gpt2"))                 # 124M GPT-2, random init
    model = GPT(GPTConfig.preset("gpt2", arch="llama"))   # the same size with RoPE, SwiGLU, RMSNorm
    model = GPT.from_pretrained("gpt2")                   # OpenAI weights (hub name or local HF directory)
    out = model.generate(idx, 50, temperature=0.8, top_k=50)

A reader's map of the architecture fields (defaults = GPT-2) and the --arch presets that change them
(ARCHS below; gpt2 changes none, postln only norm_position):
    norm            layernorm | rmsnorm          RMSNorm: llama, modern
    norm_position   pre | post                   pre: x + f(norm(x)); post: norm(x + f(x)) (no ln_f): postln
    pos_emb         learned | rope               rotary q/k, no wpe table: llama, modern
    rope_base       10000.0                      RoPE's theta
    mlp             gelu | swiglu | relu2        swiglu: llama; relu2 (ReLU squared): modern
    mlp_hidden      0 = 4*n_embd                 llama: the width that keeps GPT-2's parameter count (swiglu_hidden)
    bias            True                         biases in every Linear and LayerNorm; off: llama, modern
    qk_norm         False                        RMSNorm on each head's q and k: modern
    tie_head        True                         lm_head shares wte's weight; untied: modern
    zero_init_proj  False                        attention and MLP output projections start at 0: modern

Also here, because several scripts need them: checkpoint loading (each zip member's CRC-32 checked first), Hugging
Face weights (GPT-2 and Llama layouts), training FLOPs per token and MFU.
"""

import concurrent.futures
import dataclasses
import json
import mmap
import os
import re
import struct
import warnings
import zipfile
import zlib

import torch
import torch.nn as nn
from torch.nn import functional as F

from muon import CombinedOptimizer, Muon

# a pruned layer with no heads left has empty q/k/v and output matrices; their init is a no-op, not a problem
warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")

GPT2_VOCAB_SIZE = 50257  # the real tokenizer size; training pads the embedding table to 50304 for speed

# -----------------------------------------------------------------------------
# configuration


@dataclasses.dataclass
class GPTConfig:
    block_size: int = 1024  # max sequence length
    vocab_size: int = GPT2_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    layer_heads: list = None  # heads per layer (pruned models, heads.py); None = n_head in every layer
    # the architecture (see the map at the top; the defaults are GPT-2)
    norm: str = "layernorm"
    norm_position: str = "pre"
    pos_emb: str = "learned"
    rope_base: float = 10000.0
    mlp: str = "gelu"
    mlp_hidden: int = 0
    bias: bool = True
    qk_norm: bool = False
    tie_head: bool = True
    zero_init_proj: bool = False

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: the head size {self.n_embd // self.n_head} must be even")

    def heads_per_layer(self):
        """Each layer's head count. Head size is n_embd // n_head in every layer, whatever its count."""
        if self.layer_heads is None:
            return [self.n_head] * self.n_layer
        heads = [int(h) for h in self.layer_heads]
        if len(heads) != self.n_layer or any(not 0 <= h <= self.n_head for h in heads):
            raise ValueError(f"layer_heads {self.layer_heads} must give {self.n_layer} counts from 0 to n_head "
                             f"{self.n_head}")
        return heads

    @staticmethod
    def preset(name, arch="gpt2", **overrides):
        """A GPT-2 size by name, in an --arch (ARCHS); overrides (e.g. vocab_size=50304, mlp="relu2") are applied
        on top, and None means "not given". A SwiGLU MLP without a given mlp_hidden gets swiglu_hidden(config)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model '{name}': choose one of {', '.join(PRESETS)}")
        if arch not in ARCHS:
            raise ValueError(f"unknown arch '{arch}': choose one of {', '.join(ARCHS)}")
        fields = {**PRESETS[name], **ARCHS[arch], **{k: v for k, v in overrides.items() if v is not None}}
        config = GPTConfig(**fields)
        return dataclasses.replace(config, mlp_hidden=swiglu_hidden(config)) if config.mlp == "swiglu" and not \
            config.mlp_hidden else config


ARCH_FIELDS = ("norm", "norm_position", "pos_emb", "rope_base", "mlp", "mlp_hidden", "bias", "qk_norm", "tie_head",
               "zero_init_proj")
CHOICES = dict(norm=("layernorm", "rmsnorm"), norm_position=("pre", "post"), pos_emb=("learned", "rope"),
               mlp=("gelu", "swiglu", "relu2"))

PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}

ARCHS = {
    "gpt2": {},  # today's GPT-2: every field at its default
    "llama": dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False),  # tied head, as the seed's variant
    "modern": dict(norm="rmsnorm", pos_emb="rope", mlp="relu2", bias=False, qk_norm=True, tie_head=False,
                   zero_init_proj=True),  # the speedrun's choices
    "postln": dict(norm_position="post"),  # GPT-2 with x = norm(x + f(x))
}


def swiglu_hidden(config):
    """The SwiGLU width that keeps the parameter count of GPT-2 at the same size (and head tying): about
    8/3 * n_embd, since its three matrices replace GELU's two of 4 * n_embd, plus what makes up for the position
    table and biases it may drop. Rounded to a multiple of 64 for fast matmuls (of 8 below n_embd 256)."""
    multiple = 64 if config.n_embd >= 256 else 8
    gpt2 = {k: v for k, v in dataclasses.asdict(GPTConfig()).items() if k in ARCH_FIELDS and k != "tie_head"}
    with torch.device("meta"):  # shapes only: no memory, no init
        count = lambda **fields: GPT(dataclasses.replace(config, **fields)).num_params()
        target, base, per_multiple = count(**gpt2), count(mlp_hidden=multiple), count(mlp_hidden=2 * multiple)
    return max(multiple, multiple * round(1 + (target - base) / (per_multiple - base)))


# -----------------------------------------------------------------------------
# the network


class KVCache:
    """Preallocated keys and values for every layer, so each generated token costs one position."""

    def __init__(self, config, max_len):
        self.n_layer, self.max_len = config.n_layer, max_len
        self.k = self.v = None  # allocated on first use, in the dtype attention runs in (autocast or not)
        self.pos = 0  # positions filled so far, advanced by GPT.forward after the last layer

    def update(self, layer, k, v):
        """Store this step's keys/values for a layer; return all keys/values so far."""
        if self.k is None:
            self.k, self.v = [None] * self.n_layer, [None] * self.n_layer  # one tensor per layer: head counts may differ
        if self.k[layer] is None:
            B, nh, _, hs = k.shape
            self.k[layer] = k.new_zeros((B, nh, self.max_len, hs))
            self.v[layer] = torch.zeros_like(self.k[layer])
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class RMSNorm(nn.Module):
    """x / rms(x) * weight: LayerNorm without the mean and the bias. In float32, as Llama's; torch 2.4 has no
    F.rms_norm."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(config, dim):
    return RMSNorm(dim) if config.norm == "rmsnorm" else nn.LayerNorm(dim, bias=config.bias)


def apply_rope(x, start, base):
    """Rotate queries or keys (B, nh, T, hs) by the angles of their positions start .. start+T-1. The two halves
    of each head are the pairs (Hugging Face Llama's rotate_half layout, so its q/k weights are ours unchanged)."""
    T, hs = x.size(-2), x.size(-1)
    inv_freq = 1.0 / (base ** (torch.arange(0, hs, 2, dtype=torch.int64, device=x.device).float() / hs))
    angles = torch.outer(torch.arange(start, start + T, device=x.device).float(), inv_freq)
    cos, sin = torch.cat((angles, angles), dim=-1).cos(), torch.cat((angles, angles), dim=-1).sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return (x.float() * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, n_head):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.head_size = n_head, config.n_embd // config.n_head  # n_head < config.n_head when pruned
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * n_head * self.head_size, bias=config.bias)  # q, k, v of all heads
        self.c_proj = nn.Linear(n_head * self.head_size, config.n_embd, bias=config.bias)
        self.keep_attention = False  # heads.py sets it to get self.attention, the (B, nh, T, S) softmax weights
        self.rope_base = config.rope_base if config.pos_emb == "rope" else None
        if config.qk_norm:  # normalized q and k bound the attention logits (a stability fix)
            self.q_norm, self.k_norm = RMSNorm(self.head_size), RMSNorm(self.head_size)
        self.qk_norm = config.qk_norm

    def forward(self, x, kv_cache=None, layer=0, head_mask=None):
        """head_mask: None, or (n_head,) factors multiplying each head's output before c_proj (heads.py)."""
        B, T, C = x.size()
        if self.n_head == 0:  # every head pruned: the sublayer adds c_proj's bias only
            return self.c_proj(x.new_zeros(B, T, 0))
        q, k, v = self.c_attn(x).split(self.n_head * self.head_size, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.qk_norm:
            q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        if self.rope_base is not None:  # positions continue where the cache left off
            start = kv_cache.pos if kv_cache is not None else 0
            q, k = apply_rope(q, start, self.rope_base), apply_rope(k, start, self.rope_base)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)
        if self.keep_attention:
            y = self.explicit_attention(q, k, v)
        elif k.size(2) == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash attention where available
        else:
            # new queries sit at the end of the cached keys: query i sees keys up to its own position
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=k.size(2) - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if head_mask is not None:
            y = y * head_mask.to(y.dtype).view(1, -1, 1, 1)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_size)
        return self.c_proj(y)

    def explicit_attention(self, q, k, v):
        """The same attention with the weights written out and kept in self.attention; only when asked."""
        T, S = q.size(2), k.size(2)
        scores = (q @ k.transpose(-2, -1)) * self.head_size ** -0.5
        future = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T).logical_not()
        self.attention = F.softmax(scores.float().masked_fill(future, float("-inf")), dim=-1).to(q.dtype)
        return self.attention @ v


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        hidden = config.mlp_hidden or 4 * config.n_embd
        self.kind = config.mlp
        # SwiGLU's gate and up projections are one matmul: c_fc's first `hidden` rows gate, the rest go up
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.kind == "swiglu" else hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)

    def forward(self, x):
        h = self.c_fc(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = self.gelu(h)
        return self.c_proj(h)


class Block(nn.Module):

    def __init__(self, config, n_head):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, n_head)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)
        self.post_norm = config.norm_position == "post"

    def forward(self, x, kv_cache=None, layer=0, head_mask=None):
        if self.post_norm:  # the original Transformer's (and BERT's): normalize the sum
            x = self.ln_1(x + self.attn(x, kv_cache, layer, head_mask))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), kv_cache, layer, head_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **({"wpe": nn.Embedding(config.block_size, config.n_embd)} if config.pos_emb == "learned" else {}),
            h=nn.ModuleList([Block(config, n_head) for n_head in config.heads_per_layer()]),
            # Post-LN's last block already ends in a norm
            **({"ln_f": make_norm(config, config.n_embd)} if config.norm_position == "pre" else {}),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_head:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying: one Parameter for both
        self.apply(self._init_weights)
        # residual projections add to the stream once per sublayer, 2 per block: scale them so the
        # residual variance does not grow with depth (GPT-2 paper); or start them at 0, so each block
        # begins as the identity (zero_init_proj)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 * (2 * config.n_layer) ** -0.5)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, kv_cache=None, last_only=False, head_mask=None, head_positions=None,
                loss_chunk=0):
        """idx (B, T) token ids -> (logits, loss). loss is the mean cross-entropy when targets are given
        (positions with target -1 are ignored). last_only computes the head for the final position only;
        head_positions, a (B, T) bool mask, only at those positions: logits (K, vocab) in row-major order.
        head_mask: None, or (n_layer, n_head) factors on each head's output (layer l uses its first
        layer_heads[l] columns); 0 removes a head, and its gradient is the head's importance (heads.py).
        loss_chunk > 0 (with targets): logits None, the loss from chunked_cross_entropy in rows of that many."""
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"input of length {start + T} is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        if self.config.pos_emb == "learned":  # RoPE rotates q and k inside attention instead
            x = x + self.transformer.wpe(torch.arange(start, start + T, dtype=torch.long, device=idx.device))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, kv_cache, layer, None if head_mask is None else head_mask[layer, :block.attn.n_head])
        if kv_cache is not None:
            kv_cache.pos += T
        if self.config.norm_position == "pre":
            x = self.transformer.ln_f(x)
        if last_only and targets is None:
            x = x[:, -1:, :]
        elif head_positions is not None and targets is None:
            x = x[head_positions]  # scoring reads a few positions: the head is most of a small model's cost
        if targets is not None and loss_chunk:  # training: the loss and its gradients, never the whole logits
            return None, chunked_cross_entropy(x.view(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1),
                                               loss_chunk)
        logits = self.lm_head(x)
        loss = None if targets is None else F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, exclude_pos=False):
        n = sum(p.numel() for p in self.parameters())  # a tied weight is counted once
        return n - self.transformer.wpe.weight.numel() if exclude_pos and "wpe" in self.transformer else n

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Accepts state dicts saved from torch.compile'd or DDP-wrapped models too."""
        return super().load_state_dict(clean_state_dict(state_dict), strict=strict, assign=assign)

    def configure_optimizers(self, weight_decay, learning_rate, device_type, fused=None, optimizer="adamw"):
        """AdamW with decay on matrices and embeddings (>= 2-D) only; biases and norm gains are not decayed.
        optimizer="muon": Muon (muon.py) takes the 2-D matrices inside the blocks, AdamW the embeddings, the head
        and the 1-D parameters; both at the same learning rate and decay (Muon scales its update to AdamW's RMS)."""
        if optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be adamw or muon, got {optimizer!r}")
        hidden = [p for name, p in self.named_parameters()
                  if optimizer == "muon" and p.requires_grad and p.dim() == 2 and name.startswith("transformer.h.")]
        params = [p for p in self.parameters() if p.requires_grad and all(p is not h for h in hidden)]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        if fused is None:
            fused = device_type == "cuda"  # the fused kernel is one launch per step instead of one per tensor
        adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, betas=(0.9, 0.95), eps=1e-8,
                                  fused=fused)
        if optimizer == "adamw":
            return adamw
        return CombinedOptimizer([Muon(hidden, lr=learning_rate, weight_decay=weight_decay), adamw])

    # -------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Continue idx (B, T) by max_new_tokens tokens -> (B, T + max_new_tokens). temperature 0 means greedy."""
        new_tokens = list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, generator))
        return torch.cat([idx] + new_tokens, dim=1)

    @torch.no_grad()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Yield each new token (B, 1) as soon as it is sampled, for streaming; generate() collects them.
        Uses a KV cache while the sequence fits in block_size; past that, the window slides one token per step
        and is re-run at positions 0..block_size-1, exactly as a cropped full recompute, for every arch. (With
        RoPE, rolling the cache would be cheaper, but not the same: the deeper layers' cached keys carry the
        context of the tokens that left the window, and the model never trained on such keys.)"""
        block_size = self.config.block_size
        kv_cache = KVCache(self.config, min(block_size, idx.size(1) + max_new_tokens))
        logits, _ = self(idx[:, -block_size:], kv_cache=kv_cache, last_only=True)
        for i in range(max_new_tokens):
            next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
            yield next_token
            if i == max_new_tokens - 1:
                break
            idx = torch.cat((idx, next_token), dim=1)
            if kv_cache.pos < block_size:
                logits, _ = self(next_token, kv_cache=kv_cache, last_only=True)
            else:
                logits, _ = self(idx[:, -block_size:], last_only=True)

    @classmethod
    def from_checkpoint(cls, path, device="cpu", checkpoint=None):
        """A model from one of train_gpt2.py's checkpoints (log/model_XXXXX.pt), or build-nanogpt's or nanoGPT's.
        `checkpoint`: the file at `path`, if already read."""
        checkpoint = checkpoint or load_checkpoint(path)
        model = cls(checkpoint_config(checkpoint))
        state = {k: v for k, v in clean_state_dict(checkpoint["model"]).items() if not k.endswith(".attn.bias")}
        if set(state) != set(model.state_dict()):
            differ = sorted(set(state) ^ set(model.state_dict()))
            raise ValueError(f"{path} does not hold the model its config describes: these weights differ: {differ[:5]}")
        model.load_state_dict(state)
        return model.to(device)

    @classmethod
    def from_pretrained(cls, name_or_path):
        """Hugging Face weights: OpenAI GPT-2 (a hub name: gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a local
        directory), or a local LlamaForCausalLM directory of the shape --arch llama has (what export_hf.py
        writes); config.json and model.safetensors or pytorch_model.bin."""
        directory = name_or_path if os.path.isdir(name_or_path) else download_hf_model(name_or_path)
        with open(os.path.join(directory, "config.json")) as f:
            hf_config = json.load(f)
        if hf_config.get("model_type") == "llama":
            model = cls(llama_config(hf_config))
            model.load_state_dict(llama_to_our_state_dict(read_hf_weights(directory), model.state_dict()))
            return model
        config = GPTConfig(block_size=hf_config["n_positions"], vocab_size=hf_config["vocab_size"],
                           n_layer=hf_config["n_layer"], n_head=hf_config["n_head"], n_embd=hf_config["n_embd"])
        model = cls(config)
        model.load_state_dict(hf_to_our_state_dict(read_hf_weights(directory), model.state_dict()))
        return model


class ChunkedCrossEntropy(torch.autograd.Function):
    """cross_entropy(h @ weight.T, targets) without the (N, vocab) logits: the head runs `rows` positions at a
    time, and the gradients are computed in that same pass (softmax - one-hot, times h or weight), so nothing
    vocab-wide is kept for backward, which only scales them by the incoming gradient. The loss is the same
    reduction of the same per-position log-probs as F.cross_entropy (mean over targets != -1)."""

    @staticmethod
    def forward(ctx, h, weight, targets, rows):
        need_h, need_weight = ctx.needs_input_grad[:2]
        n_targets = (targets != -1).sum()
        grad_h = torch.empty_like(h) if need_h else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        picked = []
        for start in range(0, h.size(0), rows):
            h_rows, t_rows = h[start:start + rows], targets[start:start + rows]
            logits = F.linear(h_rows, weight)  # under autocast, in its dtype, as lm_head would be
            logprobs = F.log_softmax(logits.float(), dim=-1)
            picked.append(logprobs.gather(1, t_rows.clamp(min=0)[:, None]))
            if need_h or need_weight:
                grad_logits = logprobs.exp_()  # softmax, in place
                grad_logits[torch.arange(len(t_rows), device=h.device), t_rows.clamp(min=0)] -= 1
                grad_logits[t_rows == -1] = 0
                grad_logits = (grad_logits / n_targets).to(logits.dtype)
                if need_h:
                    grad_h[start:start + rows] = grad_logits @ weight.to(logits.dtype)
                if need_weight:
                    grad_weight += (grad_logits.t() @ h_rows.to(logits.dtype)).float()
        ctx.save_for_backward(grad_h, grad_weight)
        ctx.weight_dtype = weight.dtype
        return F.nll_loss(torch.cat(picked), torch.where(targets == -1, -1, 0), ignore_index=-1)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_weight = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype),
                None if grad_weight is None else (grad_weight * grad_loss).to(ctx.weight_dtype), None, None)


@torch.compiler.disable  # a loop over chunks and a hand-written backward: eager, outside any compiled graph
def chunked_cross_entropy(h, weight, targets, rows):
    return ChunkedCrossEntropy.apply(h, weight, targets, rows)


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (B, V) -> next token ids (B, 1), with temperature, top-k and nucleus (top-p) filtering."""
    # the padded rows (50257..50303) are not tokens: drop them, so a checkpoint and its Hugging Face export
    # draw the same tokens from the same generator
    logits = logits[:, :GPT2_VOCAB_SIZE].float()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already cover top_p; the first token always stays
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# -----------------------------------------------------------------------------
# state dicts: our checkpoints and Hugging Face GPT-2


def clean_state_dict(state_dict):
    """Strip the '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes from keys."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            key = key.replace(prefix, "")
        cleaned[key] = value
    return cleaned


# build-nanogpt pickles its GPTConfig dataclass (defined in the script it ran, so `__main__.GPTConfig`) into its
# checkpoints. weights_only loading refuses unknown classes; this inert stand-in, allowed by name, receives the
# fields as plain attributes and runs no code of the file's.
PeerGPTConfig = type("GPTConfig", (), {"__module__": "__main__", "__doc__": "build-nanogpt's config, as data"})
torch.serialization.add_safe_globals([PeerGPTConfig])


def checkpoint_config(checkpoint):
    """GPTConfig from our checkpoints ('config' dict), build-nanogpt's ('config' object) or nanoGPT's
    ('model_args' dict; its bias=False drops the biases of Linears and LayerNorms, as ours does). A field missing
    from an older checkpoint takes GPT-2's value; keys GPTConfig does not know (nanoGPT's dropout) are ignored."""
    config = checkpoint.get("model_args") or checkpoint["config"]
    config = vars(config) if isinstance(config, PeerGPTConfig) else config
    sizes = ["block_size", "vocab_size", "n_layer", "n_head", "n_embd"]
    if not isinstance(config, dict) or any(name not in config for name in sizes):
        raise ValueError(f"the checkpoint's config {config!r:.200} does not give all of {sizes}")
    return GPTConfig(**{field.name: config[field.name] for field in dataclasses.fields(GPTConfig) if field.name in config})


def find_checkpoints(log_dir):
    """[(step, path)] of a log dir's model_XXXXX.pt files, oldest first."""
    names = os.listdir(log_dir) if os.path.isdir(log_dir) else []
    return sorted((int(m[1]), os.path.join(log_dir, n)) for n in names if (m := re.fullmatch(r"model_(\d+)\.pt", n)))


def resolve_checkpoint_path(path, flag="-c "):
    """What -c means in every script: a checkpoint file, or a run directory (its newest model_XXXXX.pt).
    `flag`: how the script's command line takes the path, for the hint to a subdirectory that holds checkpoints."""
    if os.path.isdir(path):
        found = find_checkpoints(path)
        if found:
            return found[-1][1]
        runs = [os.path.join(path, name, "") for name in sorted(os.listdir(path))
                if find_checkpoints(os.path.join(path, name))]
        if len(runs) == 1:
            raise FileNotFoundError(f"{path} holds no checkpoints; {runs[0]} does: pass {flag}{runs[0]}")
        if runs:
            raise FileNotFoundError(f"{path} holds no checkpoints; its subdirectories {', '.join(runs)} do: pass one "
                                    f"of them, e.g. {flag}{runs[-1]}")
        raise FileNotFoundError(f"{path} holds no checkpoints (model_XXXXX.pt): train into it first, or pass a "
                                f"checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass a checkpoint file or a run directory "
                                f"such as log/")
    return path


def fallback_checkpoint(path, log_dir=None):
    """The checkpoint that a run directory (-c DIR, --resume auto) would give if `path` were moved out of it: the
    newest other model_XXXXX.pt in `log_dir` (default: path's own directory), or None."""
    log_dir = log_dir or os.path.dirname(path) or "."
    others = [other for _, other in find_checkpoints(log_dir) if os.path.abspath(other) != os.path.abspath(path)]
    return others[-1] if others else None


class CheckpointDamaged(ValueError):
    """A checkpoint file whose bytes are not what torch.save wrote. `problem` completes "checkpoint PATH ..."; the
    message adds what to do, which load_resume_checkpoint rewrites for a resume."""

    def __init__(self, path, problem):
        self.path, self.problem = path, problem
        other = fallback_checkpoint(path)
        advice = f"use another checkpoint, e.g. {other}" if other else "restore it from a copy, or train again"
        super().__init__(f"checkpoint {path} {problem}; {advice}")


# torch.save writes a zip archive of stored (uncompressed) members, each a local header, its bytes and a data
# descriptor (CRC-32 and sizes), then the zip directory, which repeats each member's name, offset and CRC-32
ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, CRC, sizes, name, extra
ZIP_END = b"PK\x05\x06"  # the end-of-directory record's signature, in the last 64 KiB of a zip archive
CORRUPTED = "it was corrupted after it was written"


def check_checkpoint_file(path, workers=None):
    """Raise CheckpointDamaged unless `path` is a whole zip archive in which every member's local header agrees
    with the zip directory and every member's bytes have the CRC-32 the directory and data descriptor give. Reads
    the file once, memory-mapped like torch.load(mmap=True), so the load that follows finds it in the page cache;
    members go to `workers` threads (default: torch's thread count), as zlib.crc32 releases the GIL."""
    with open(path, "rb") as f:
        try:
            with zipfile.ZipFile(f) as archive:
                members = sorted(archive.infolist(), key=lambda member: member.header_offset)
                directory_start = archive.start_dir
        except Exception:  # on a damaged directory zipfile raises BadZipFile, but also OSError, struct.error, ...
            raise CheckpointDamaged(path, unreadable_zip_problem(f)) from None
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    next_starts = [member.header_offset for member in members[1:]] + [directory_start]
    with mapped, concurrent.futures.ThreadPoolExecutor(workers or min(torch.get_num_threads(), 8)) as pool:
        problems = list(pool.map(zip_member_problem, [mapped] * len(members), members, next_starts))
    if members and members[0].header_offset != 0:
        problems.insert(0, f"is damaged (its zip directory puts the first member at byte {members[0].header_offset})"
                           f": {CORRUPTED}")
    problem = next((problem for problem in problems if problem), None)
    if problem:
        raise CheckpointDamaged(path, problem)


def unreadable_zip_problem(f):
    """Why zipfile cannot open a file: cut short or damaged at its end (where the zip directory is), or not a zip
    archive at all."""
    f.seek(0)
    head = f.read(4)
    f.seek(max(0, f.seek(0, os.SEEK_END) - (1 << 16) - 22))
    if not head:
        return "is empty: its write or copy was cut short"
    if head == b"PK\x03\x04" or ZIP_END in f.read():
        return ("is truncated or damaged at its end (its zip directory, which torch.save writes last, is missing or "
                "unreadable)")
    return ("is not a PyTorch checkpoint: it is not the zip archive that torch.save writes (another kind of file, "
            "a checkpoint from before PyTorch 1.6, or overwritten)")


def zip_member_problem(mapped, member, next_start):
    """What is wrong with one member of a memory-mapped zip archive, or None. `next_start`: where the next member
    (or the directory) begins, which its data descriptor must reach exactly."""
    header_start = member.header_offset
    header = mapped[header_start:header_start + ZIP_LOCAL_HEADER.size]
    if len(header) < ZIP_LOCAL_HEADER.size:
        return f"is damaged (its zip directory puts member {member.filename!r} past the end of the file): {CORRUPTED}"
    signature, _, flags, method, _, _, *crc_and_sizes, name_size, extra_size = ZIP_LOCAL_HEADER.unpack(header)
    name_start = header_start + ZIP_LOCAL_HEADER.size
    start = name_start + name_size + extra_size
    name = member.orig_filename.encode("utf-8" if member.flag_bits & 0x800 else "cp437")
    central = (member.CRC, member.compress_size, member.file_size)
    header_agrees = (signature == b"PK\x03\x04" and (flags, method) == (member.flag_bits, member.compress_type)
                     and mapped[name_start:name_start + name_size] == name
                     # 0: given in the data descriptor instead; 0xFFFFFFFF: in a zip64 record
                     and all(local in (0, 0xFFFFFFFF, value) for local, value in zip(crc_and_sizes, central))
                     and zip_extra_is_intact(mapped[name_start + name_size:start]))
    if not header_agrees:
        return f"is damaged (member {member.filename!r}'s local header disagrees with the zip directory): {CORRUPTED}"
    if method != zipfile.ZIP_STORED:
        return f"is damaged (member {member.filename!r} is compressed, which torch.save never does): {CORRUPTED}"
    stop = start + member.compress_size
    if stop > len(mapped):
        return f"is damaged (its zip directory puts member {member.filename!r} past the end of the file): {CORRUPTED}"
    with memoryview(mapped) as view:
        crc = zlib.crc32(view[start:stop])
    if crc != member.CRC:
        return f"is damaged (member {member.filename!r} fails its CRC-32 check): {CORRUPTED}"
    # the data descriptor: [signature], CRC-32 and the two sizes (64-bit in zip64 archives), up to the next member
    descriptor = mapped[stop:next_start].removeprefix(b"PK\x07\x08") if 0 <= next_start - stop <= 24 else b""
    sizes = {8: "<2L", 16: "<2Q"}.get(len(descriptor) - 4)
    if flags & 0x08 and (not sizes or struct.unpack("<L", descriptor[:4]) + struct.unpack(sizes, descriptor[4:]) !=
                         central):
        return f"is damaged (the data descriptor after member {member.filename!r} disagrees with it): {CORRUPTED}"
    if not flags & 0x08 and stop != next_start:
        return f"is damaged (the zip directory's offsets disagree around member {member.filename!r}): {CORRUPTED}"
    return None


def zip_extra_is_intact(extra):
    """A local header's extra field: whole (id, size, data) records, torch.save's alignment padding all 'Z's."""
    while len(extra) >= 4:
        kind, size = struct.unpack("<2sH", extra[:4])
        if len(extra) < 4 + size or (kind == b"FB" and extra[4:4 + size] != b"Z" * size):
            return False
        extra = extra[4 + size:]
    return not extra


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint dict, with one clear error for a missing, truncated, damaged or unsafe file: first every
    member's CRC-32 (check_checkpoint_file), then torch.load with weights_only=True, which refuses anything but
    tensors and plain containers, so no pickled code runs."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    check_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=True)  # mmap: no 2nd copy in RAM
    except Exception as e:
        if "Weights only load failed" in str(e):
            found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch's wording varies: "Unsupported global: GLOBAL x"
            what = found[1] if found else "an object"
            raise ValueError(f"checkpoint {path} is unsafe to load: it pickles {what}, which is code, not tensors or "
                             f"plain containers; use a checkpoint that train_gpt2.py wrote") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load checkpoint {path}: its bytes are intact, but torch.load cannot read what they "
                         f"hold ({reason[:200]})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise ValueError(f"{path} is not a train_gpt2.py checkpoint (it needs 'model' and 'config' entries)")
    return checkpoint


# Hugging Face's GPT-2 uses Conv1D, which stores Linear weights transposed
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def download_hf_model(name):
    if name not in PRESETS:
        raise ValueError(f"'{name}' is neither a local directory nor one of {', '.join(PRESETS)}")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name, allow_patterns=["config.json", "model.safetensors"])
    except Exception as e:
        raise RuntimeError(f"could not download '{name}' from the Hugging Face hub ({type(e).__name__}); "
                           f"offline, pass a local directory with config.json and model.safetensors") from None


def read_hf_weights(directory):
    safetensors_path = os.path.join(directory, "model.safetensors")
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(safetensors_path):
        from safetensors.torch import load_file
        return load_file(safetensors_path)
    if os.path.exists(bin_path):
        return torch.load(bin_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def hf_to_our_state_dict(hf_state, our_state):
    """Map Hugging Face GPT2LMHeadModel / GPT2Model keys onto ours, transposing Conv1D weights."""
    converted = {}
    for key, value in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # HF's causal-mask buffers, not weights
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        key = key if key.startswith("transformer.") else "transformer." + key
        converted[key] = value.t() if key.endswith(HF_TRANSPOSED) else value
    converted["lm_head.weight"] = converted.get("transformer.wte.weight")
    missing = sorted(k for k in our_state if converted.get(k) is None)
    unexpected = sorted(k for k in converted if k not in our_state)
    if missing or unexpected:
        raise ValueError(f"Hugging Face weights do not fit GPT-2: missing {missing}, unexpected {unexpected}")
    wrong = [k for k in our_state if converted[k].shape != our_state[k].shape]
    if wrong:
        raise ValueError(f"Hugging Face weights have the wrong shape for {wrong}")
    return converted


def llama_config(hf_config):
    """GPTConfig for a Hugging Face LlamaForCausalLM config.json, when it is a model --arch llama can be:
    one key/value head per head, no RoPE scaling, no biases, SiLU, and our RMSNorm epsilon."""
    get = hf_config.get
    n_embd, n_head = hf_config["hidden_size"], hf_config["num_attention_heads"]
    rope = get("rope_parameters") or {"rope_theta": get("rope_theta", 10000.0), **(get("rope_scaling") or {})}
    unsupported = {"num_key_value_heads (grouped-query attention)": get("num_key_value_heads", n_head) != n_head,
                   "rope scaling": rope.get("rope_type", "default") != "default" or bool(get("rope_scaling")),
                   "attention_bias": bool(get("attention_bias")),
                   "mlp_bias": bool(get("mlp_bias")), "hidden_act": get("hidden_act", "silu") != "silu",
                   "head_dim": get("head_dim", n_embd // n_head) != n_embd // n_head,
                   "rms_norm_eps": get("rms_norm_eps", 1e-6) != RMSNorm(1).eps}
    if any(unsupported.values()):
        raise ValueError(f"this Llama directory has what --arch llama does not: "
                         f"{', '.join(k for k, v in unsupported.items() if v)}")
    return GPTConfig(block_size=hf_config["max_position_embeddings"], vocab_size=hf_config["vocab_size"],
                     n_layer=hf_config["num_hidden_layers"], n_head=n_head, n_embd=n_embd, **ARCHS["llama"],
                     rope_base=float(rope["rope_theta"]), mlp_hidden=hf_config["intermediate_size"],
                     tie_head=get("tie_word_embeddings", True))


# our names -> LlamaForCausalLM's, inside each block (c_attn is q_proj, k_proj, v_proj stacked; c_fc gate and up)
LLAMA_BLOCK_NAMES = {"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
                     "attn.c_proj.weight": "self_attn.o_proj.weight", "mlp.c_proj.weight": "mlp.down_proj.weight"}


def llama_to_our_state_dict(hf_state, our_state):
    """LlamaForCausalLM keys onto ours: q/k/v stacked into c_attn, gate/up into c_fc."""
    hf_state = {k.removeprefix("model."): v for k, v in hf_state.items()}
    converted = {"transformer.wte.weight": hf_state.pop("embed_tokens.weight"),
                 "transformer.ln_f.weight": hf_state.pop("norm.weight")}
    converted["lm_head.weight"] = hf_state.pop("lm_head.weight", converted["transformer.wte.weight"])
    for i in range(len([k for k in our_state if k.endswith(".attn.c_attn.weight")])):
        ours, theirs = f"transformer.h.{i}.", f"layers.{i}."
        for our_name, hf_name in LLAMA_BLOCK_NAMES.items():
            converted[ours + our_name] = hf_state.pop(theirs + hf_name)
        converted[ours + "attn.c_attn.weight"] = torch.cat([hf_state.pop(f"{theirs}self_attn.{n}_proj.weight")
                                                            for n in "qkv"])
        converted[ours + "mlp.c_fc.weight"] = torch.cat([hf_state.pop(f"{theirs}mlp.{n}_proj.weight")
                                                         for n in ("gate", "up")])
    leftover = [k for k in hf_state if not k.endswith("rotary_emb.inv_freq")]
    wrong = [k for k in our_state if k not in converted or converted[k].shape != our_state[k].shape]
    if leftover or wrong:
        raise ValueError(f"Llama weights do not fit --arch llama: unexpected {leftover[:5]}, missing or misshapen "
                         f"{wrong[:5]}")
    return converted


# -----------------------------------------------------------------------------
# FLOPs (MFU against each GPU's peak is hardware.py's)


def flops_per_token(config, seq_len):
    """Training FLOPs per token: 6*N + 6*n_layer*n_embd*seq_len (n_layer*n_embd: the attention width summed over
    layers, less when heads were pruned). N counts the matmul weights: attention (4 n_embd x its width) and MLP
    (2 matrices, SwiGLU's 3) in every block, plus the lm_head once, tied or not (the token embedding is a lookup).
    Position embeddings (learned or RoPE), biases and norms are left out. The attention term is the QK^T and AV
    matmuls, 12*L*C*T for full attention, halved because a causal kernel skips the masked half. Forward is 1/3,
    backward 2/3."""
    L, C = config.n_layer, config.n_embd
    attn_width = sum(config.heads_per_layer()) * (C // config.n_head)  # L * C unless heads were pruned
    mlp_matrices = 3 if config.mlp == "swiglu" else 2
    matmul_params = 4 * C * attn_width + L * mlp_matrices * C * (config.mlp_hidden or 4 * C) + config.vocab_size * C
    return 6 * matmul_params + 6 * attn_width * seq_len


# FLOPs per token counted by flops_per_token, said wherever MFU is printed
FLOPS_CONVENTION = ("MFU counts 6N + 6*L*C*T FLOPs per token (llm.c's; nanoGPT and nanochat count 12*L*C*T, "
                    "which reads about 7% higher for 124M at T=1024)")
