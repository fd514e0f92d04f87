# Wrote tests/data/gpt2_reference.pt with model.py as of main d7e495e (before the --arch fields); kept to show how.
# Do not regenerate it: it pins the model as it was then. Its integers and init are exact on any x86 CPU with AVX2;
# its logits, losses and trained weights came from that CPU's float kernels, and tests/test_model.py compares
# them with tolerances (another CPU sums matmuls in another order).
# Run from the repo root: PYTHONPATH=. OMP_NUM_THREADS=1 python tests/data/make_gpt2_reference.py
import torch
from model import GPT, GPTConfig
torch.manual_seed(1234)
cfg = GPTConfig(block_size=32, vocab_size=96, n_layer=2, n_head=2, n_embd=32)
model = GPT(cfg).eval()
idx = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(5))
logits, loss = model(idx, targets=idx)
ref = {"config": vars(cfg).copy(), "idx": idx, "logits": logits.detach(), "loss": loss.detach(),
       "state": {k: v.clone() for k, v in model.state_dict().items()},
       "num_params": model.num_params(), "flops_per_token": __import__("model").flops_per_token(cfg, 32)}
gen = model.generate(idx[:, :4], 40, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(9))
ref["generated"] = gen
torch.save(ref, "tests/data/gpt2_reference.pt")
print(ref["loss"], ref["num_params"], ref["flops_per_token"], list(ref["state"]))
# three AdamW steps through configure_optimizers, as train_gpt2.py builds it on CPU
model.train()
opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, device_type="cpu")
losses = []
for _ in range(3):
    _, loss = model(idx, targets=idx)
    opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
ref["train_losses"] = torch.tensor(losses, dtype=torch.float64)
ref["trained_c_fc"] = model.transformer.h[1].mlp.c_fc.weight.detach().clone()
torch.save(ref, "tests/data/gpt2_reference.pt")
print(losses)
