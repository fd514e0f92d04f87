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
    mlp             gelu | swiglu | relu2        swiglu: llama; relu2 (ReLU squared): modern; gelu_exact: nanoGPT's
                    | gelu_exact                 erf GELU (its checkpoints; gelu is GPT-2's tanh approximation)
    mlp_hidden      0 = 4*n_embd                 llama: the width that keeps GPT-2's parameter count (swiglu_hidden)
    bias            True                         biases in every Linear and LayerNorm; off: llama, modern
    qk_norm         False                        RMSNorm on each head's q and k: modern
    tie_head        True                         lm_head shares wte's weight; untied: modern
    zero_init_proj  False                        attention and MLP output projections start at 0: modern

Also here: the chunked training loss, sampling, and training FLOPs per token. Files (our checkpoints, peers', Hugging
Face weights) are checkpoint.py's.
"""

import dataclasses
import warnings

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
               mlp=("gelu", "swiglu", "relu2", "gelu_exact"))

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
        self.gelu = nn.GELU(approximate="none" if self.kind == "gelu_exact" else "tanh")  # GPT-2's is "gelu_new"
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

    # nanoGPT's idiom GPT.from_pretrained("gpt2") stays. The files are read by checkpoint.py, which imports this
    # module: the one import here that points up, made when first called

    @classmethod
    def from_pretrained(cls, name_or_path):
        """Hugging Face weights: OpenAI GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a local directory), or
        a local LlamaForCausalLM directory of the shape --arch llama has. nanoGPT's idiom; checkpoint.py reads
        the files."""
        import checkpoint
        return checkpoint.model_from_pretrained(name_or_path)


class ChunkedCrossEntropy(torch.autograd.Function):
    """cross_entropy(h @ weight.T, targets) without the (N, vocab) logits: the head runs `rows` positions at a
    time, and the gradients are computed in that same pass (softmax - one-hot, times h or weight), so nothing
    vocab-wide is kept for backward, which only scales them by the incoming gradient. The loss is the same
    reduction of the same per-position log-probs as F.cross_entropy (mean over targets != -1)."""

    @staticmethod
    def forward(ctx, h, weight, targets, rows):
        need_h, need_weight = ctx.needs_input_grad[:2]
        valid = targets != -1
        share = valid / valid.sum()  # d(mean loss)/d(each position's loss): 1/n_targets, 0 where ignored
        picked_targets = targets.clamp(min=0)[:, None]
        grad_h = torch.empty_like(h) if need_h else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        picked = []
        # vocab-wide work is memory-bound: each pass over a chunk's logits is ~1/4 GiB, so passes are kept few
        for start in range(0, h.size(0), rows):
            h_rows, t_rows = h[start:start + rows], picked_targets[start:start + rows]
            logits = F.linear(h_rows, weight)  # under autocast, in its dtype, as lm_head would be
            logprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)  # upcast inside the kernel on CUDA
            picked.append(logprobs.gather(1, t_rows))
            if need_h or need_weight:
                grad_logits = logprobs.exp_()  # softmax, in place
                grad_logits.scatter_add_(1, t_rows, torch.full_like(t_rows, -1, dtype=grad_logits.dtype))
                grad_logits = grad_logits.mul_(share[start:start + rows, None]).to(logits.dtype)
                if need_h:  # autocast casts the head weight (a leaf) once per region: F.linear's copy, reused
                    grad_h[start:start + rows] = grad_logits @ weight
                if need_weight:
                    grad_weight += (grad_logits.t() @ h_rows.to(logits.dtype)).float()
        ctx.save_for_backward(grad_h, grad_weight)
        ctx.weight_dtype = weight.dtype
        return F.nll_loss(torch.cat(picked), torch.where(valid, 0, -1), ignore_index=-1)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_weight = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype),
                None if grad_weight is None else (grad_weight * grad_loss).to(ctx.weight_dtype), None, None)


# eager, outside any compiled graph (a chunk loop, a hand-written backward). torch._disable_dynamo is torch's own
# lazy torch.compiler.disable: torch._dynamo's import (~1 s of every script's start) waits for the first call
@torch._disable_dynamo
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
# state dicts saved from wrapped models


def clean_state_dict(state_dict):
    """Strip the '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes from keys."""
    return {key.replace("_orig_mod.", "").replace("module.", ""): value for key, value in state_dict.items()}


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
