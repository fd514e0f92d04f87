"""
Muon: momentum, then the update matrix orthogonalized by a Newton-Schulz iteration (Keller Jordan, 2024), for the
2-D hidden matrices of a network; train_gpt2.py --optimizer muon gives the rest (embeddings, head, 1-D
parameters) to AdamW through CombinedOptimizer. Written here so that it runs on torch 2.4 and later.

The arithmetic is torch.optim.Muon's (torch >= 2.9) with adjust_lr_fn="match_rms_adamw": the same EMA momentum
with Nesterov, the same quintic Newton-Schulz coefficients and steps in bfloat16, decoupled weight decay, and the
update scaled by 0.2 * sqrt(max(rows, cols)) so that its RMS matches AdamW's (Moonshot's "Muon is Scalable"),
which lets Muon use AdamW's learning rate and weight decay. tests/test_muon.py checks it step for step against
torch.optim.Muon where the installed torch has it.

Under DDP every rank holds the same all-reduced gradients and runs the same deterministic arithmetic, so all
ranks compute the same update (each one does the whole orthogonalization; nothing is sharded). Its state (one
momentum buffer per matrix) is an ordinary optimizer state_dict, so checkpoints resume it bit-exactly.
"""

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # quintic: maximal slope at zero, so few steps suffice


def orthogonalize(update, steps=5, eps=1e-7, coefficients=NS_COEFFICIENTS):
    """Newton-Schulz iteration towards U V^T of update = U S V^T (it lands at U S' V^T, S' roughly in
    [0.5, 1.5], which trains as well), in bfloat16."""
    a, b, c = coefficients
    x = update.bfloat16()
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T  # iterate on the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters: buf = lerp(buf, g, 1 - momentum); u = lerp(g, buf, momentum) (Nesterov);
    p *= 1 - lr * weight_decay; p -= lr * 0.2 * sqrt(max(rows, cols)) * orthogonalize(u)."""

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5, eps=1e-7):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        eps=eps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon updates 2-D matrices only, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_steps"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
        return loss


class CombinedOptimizer:
    """Several optimizers stepped as one: param_groups is all of theirs (so a schedule that sets group["lr"] and
    torch.amp.GradScaler both work), and state_dict holds each one's state in order."""

    def __init__(self, optimizers):
        self.optimizers = optimizers
        self.defaults = {}

    @property
    def param_groups(self):  # read afresh: load_state_dict replaces each optimizer's group dicts
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self):
        return {p: s for optimizer in self.optimizers for p, s in optimizer.state.items()}

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none=True):
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict):
        if len(state_dict.get("optimizers", ())) != len(self.optimizers):
            raise ValueError(f"this optimizer state holds {len(state_dict.get('optimizers', ()))} optimizers' "
                             f"states, not {len(self.optimizers)}: it was saved by another --optimizer")
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"]):
            optimizer.load_state_dict(state)
