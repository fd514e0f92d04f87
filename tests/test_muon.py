"""muon.py: the same arithmetic as torch.optim.Muon, a state that round-trips, and ranks that agree under DDP."""
import copy
import os
import subprocess
import sys

import pytest
import torch

from model import GPT, GPTConfig
from muon import CombinedOptimizer, Muon, orthogonalize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon arrived in torch 2.9")
@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_equals_torch_optim_muon_with_adamw_rms_matching(shape):
    ours, theirs = torch.randn(shape).requires_grad_(), None
    theirs = ours.detach().clone().requires_grad_()
    a = Muon([ours], lr=0.02, weight_decay=0.1)
    b = torch.optim.Muon([theirs], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(5):
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(step))
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    assert torch.equal(ours, theirs)


def test_orthogonalize_flattens_the_singular_values():
    g = torch.randn(64, 32) @ torch.diag(torch.logspace(-1, 1, 32))  # condition number 100
    s = torch.linalg.svdvals(orthogonalize(g).float())
    assert s.min() > 0.5 and s.max() < 1.5  # US'V^T with S' in about [0.5, 1.5]


def test_refuses_non_matrices():
    with pytest.raises(ValueError, match="2-D matrices only"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


def test_combined_state_round_trips_and_resumes_exactly():
    def make(seed=0):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32))
        return model, model.configure_optimizers(0.1, 1e-2, "cpu", optimizer="muon")
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))

    def steps(model, opt, n, lr=1e-2):
        for _ in range(n):
            for group in opt.param_groups:
                group["lr"] = lr
            model(idx, idx)[1].backward()
            opt.step()
            opt.zero_grad()
    model, opt = make()
    assert isinstance(opt, CombinedOptimizer)
    steps(model, opt, 2)
    saved_model, saved_opt = {k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict())
    steps(model, opt, 3, lr=5e-3)
    resumed, resumed_opt = make(seed=1)
    resumed.load_state_dict(saved_model)
    resumed_opt.load_state_dict(saved_opt)
    steps(resumed, resumed_opt, 3, lr=5e-3)  # a new lr must reach the loaded param groups
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in resumed.state_dict().items())
    with pytest.raises(ValueError, match="another --optimizer"):
        resumed_opt.load_state_dict({"state": {}, "param_groups": []})


RANKS_AGREE = r"""
import sys, torch, torch.distributed as dist
sys.path.insert(0, {root!r})
from torch.nn.parallel import DistributedDataParallel as DDP
from distributed import destroy_process_group, init_process_group
from model import GPT, GPTConfig
init_process_group("gloo", int(__import__("os").environ["RANK"]), 2)
rank = dist.get_rank()
torch.manual_seed(0)
raw = GPT(GPTConfig.preset("gpt2", arch="modern", block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32))
model, opt = DDP(raw), raw.configure_optimizers(0.1, 1e-2, "cpu", optimizer="muon")
for step in range(4):
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(10 * step + rank))  # rank's own data
    model(idx, idx)[1].backward()
    opt.step()
    opt.zero_grad()
flat = torch.cat([p.detach().flatten() for p in raw.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(gathered, flat)
assert torch.equal(gathered[0], gathered[1]), "ranks disagree"
print(f"rank {{rank}} agrees", flush=True)
kept = destroy_process_group()
"""


@pytest.mark.slow
def test_all_ranks_agree_under_ddp(tmp_path):
    script = tmp_path / "ranks_agree.py"
    script.write_text(RANKS_AGREE.format(root=ROOT))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script)], cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 agrees" in result.stdout and "rank 1 agrees" in result.stdout
