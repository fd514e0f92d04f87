"""
train_gpt2.py as a user meets it: the script runs as a subprocess with real flags (and under torchrun with gloo
for DDP), on a tiny model and shards this file writes. The equivalences are the backbone: DDP = gradient
accumulation, resume = uninterrupted, killed/preempted/restarted = undisturbed. Runs are shared between tests
through module-scoped fixtures, because each process start costs seconds.
"""
import dataclasses
import functools
import glob
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train_gpt2
from checkpoint import load_checkpoint
from model import GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train_gpt2.py")
VOCAB = 512
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--vocab-size", str(VOCAB), "--batch-size", "4",
        "--seq-len", "32", "--total-batch-size", "256", "--max-steps", "12", "--warmup-steps", "2",
        "--max-lr", "1e-2", "--min-lr", "1e-3", "--eval-every", "4", "--val-tokens", "2048",
        "--checkpoint-every", "4", "--hellaswag-every", "0", "--sample-every", "0"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def structured_tokens(rng, n, alphabet=64):
    """Learnable in a few steps: runs of consecutive ids from random starts, within the first `alphabet` ids."""
    runs, total = [], 0
    while total < n:
        run = (rng.integers(0, alphabet) + np.arange(rng.integers(4, 40))) % alphabet
        runs.append(run)
        total += len(run)
    return np.concatenate(runs)[:n].astype(np.uint16)


def write_shards(directory, seed=0, train_sizes=(6500, 7000, 7500), val_size=8000):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(os.path.join(directory, "edufineweb_val_000000.npy"), structured_tokens(rng, val_size))
    for i, size in enumerate(train_sizes, start=1):
        np.save(os.path.join(directory, f"edufineweb_train_{i:06d}.npy"), structured_tokens(rng, size))
    return str(directory)


def environment(extra=None):
    # one thread per process: the cores are shared, and the runs being compared must compute identically
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(extra or {})}


def run(args, env=None, torchrun=None, expect_rc=0, timeout=240):
    cmd = (torchrun or [sys.executable]) + [SCRIPT] + args
    result = subprocess.run(cmd, cwd=ROOT, env=environment(env), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == expect_rc, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def start(args, env=None):
    return subprocess.Popen([sys.executable, SCRIPT] + args, cwd=ROOT, env=environment(env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(proc, pattern):
    """Read the running process's stdout until a line matches."""
    for line in proc.stdout:
        if re.search(pattern, line):
            return line
    raise AssertionError(f"the run ended before printing /{pattern}/: {proc.stderr.read()[-2000:]}")


def read_log(log_dir):
    """{stream: {step: value}} from log.txt, keeping the last value per step (as plot_log.py does)."""
    streams = {}
    with open(os.path.join(log_dir, "log.txt")) as f:
        for line in f:
            assert re.fullmatch(r"\d+ (train|val|hella|skip) \S+\n", line), f"malformed log line {line!r}"
            step, stream, value = line.split()
            streams.setdefault(stream, {})[int(step)] = float(value)
    return streams


def weights(path):
    return load_checkpoint(path)["model"]


def same_weights(path_a, path_b):
    a, b = weights(path_a), weights(path_b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """One undisturbed single-process run: 12 steps of 2 micro-batches each, checkpoints at 4, 8, 12."""
    log_dir = str(tmp_path_factory.mktemp("reference"))
    result = run(["--data-dir", data_dir, "--log-dir", log_dir] + TINY)
    return dict(log_dir=log_dir, stdout=result.stdout, log=read_log(log_dir), data_dir=data_dir)


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, data_dir):
    """The same run on 2 processes (gloo), each with 1 micro-batch per step."""
    log_dir = str(tmp_path_factory.mktemp("ddp"))
    run(["--data-dir", data_dir, "--log-dir", log_dir] + TINY, torchrun=TORCHRUN)
    return dict(log_dir=log_dir, log=read_log(log_dir))


# -----------------------------------------------------------------------------
# training, schedule, DDP and resume

def test_loss_falls_and_log_has_the_reference_format(reference):
    train, val = reference["log"]["train"], reference["log"]["val"]
    assert sorted(train) == list(range(12)) and sorted(val) == [0, 4, 8, 12]
    assert train[0] == pytest.approx(np.log(VOCAB), abs=0.1)  # a fresh model guesses uniformly
    assert np.mean([train[s] for s in (9, 10, 11)]) < train[0] - 1.5
    assert val[12] < val[4] < val[0] - 0.5
    assert re.search(r"step +3 \| loss \d+\.\d{6} \| lr \S+ \| norm \S+ \| dt \S+ms \| tok/s \d+ \| mfu unknown",
                     reference["stdout"])
    assert sorted(os.listdir(reference["log_dir"])) == ["log.txt", "metrics.jsonl", "model_00004.pt", "model_00008.pt",
                                                        "model_00012.pt"]


def read_metrics(log_dir):
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_metrics_jsonl_holds_what_log_txt_and_the_step_line_hold(reference):
    records = read_metrics(reference["log_dir"])
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(12))
    assert set(train[0]) == {"step", "kind", "loss", "lr", "norm", "dt_ms", "tokens_per_sec", "mfu", "elapsed_s",
                             "eta_s", "max_steps"}
    assert all(round(r["loss"], 6) == reference["log"]["train"][r["step"]] for r in train)
    assert train[0]["max_steps"] == 12 and train[0]["mfu"] is None and train[0]["tokens_per_sec"] > 0
    assert {r["step"]: round(r["loss"], 4) for r in records if r["kind"] == "val"} == reference["log"]["val"]


def test_step_line_and_metrics_show_elapsed_and_eta(reference):
    times = re.findall(r"step +(\d+) \| loss .* \| elapsed (\d+):(\d\d):(\d\d) \| eta (\d+):(\d\d):(\d\d)$",
                       reference["stdout"], re.M)
    estimating = re.findall(r"step +(\d+) \| loss .* \| elapsed \d+:\d\d:\d\d \| eta estimating$",
                            reference["stdout"], re.M)
    first_eta = train_gpt2.ETA_MIN_STEPS - 1  # the step whose line first has an ETA: ETA_MIN_STEPS steps have run
    assert [int(s) for s in estimating] == list(range(first_eta))  # no ETA from compilation and step 0's eval
    assert [int(t[0]) for t in times] == list(range(first_eta, 12))
    assert times[-1][4:] == ("0", "00", "00")  # nothing left after the last step
    with open(os.path.join(reference["log_dir"], "metrics.jsonl")) as f:
        train = [r for r in map(json.loads, f) if r["kind"] == "train"]
    elapsed = [r["elapsed_s"] for r in train]
    assert len(train) == 12 and elapsed == sorted(elapsed) and elapsed[0] > 0
    assert all(r["eta_s"] is None for r in train[:first_eta])
    assert all(r["eta_s"] >= 0 for r in train[first_eta:]) and train[-1]["eta_s"] == 0 and train[first_eta]["eta_s"] > 0


def test_a_token_id_beyond_the_vocab_is_a_clear_error(tmp_path, data_dir):
    result = run(["--data-dir", data_dir, "--log-dir", str(tmp_path)] + TINY + ["--vocab-size", "60"], expect_rc=2)
    assert re.fullmatch(r"error: \S+edufineweb_(train|val)_\d+\.npy holds token id 6\d, which --vocab-size 60 cannot "
                        r"embed: .*\n", result.stderr)


def test_epochs_set_the_number_of_steps(tmp_path, data_dir):
    log_dir = str(tmp_path)
    result = run(["--data-dir", data_dir, "--log-dir", log_dir] + TINY + ["--epochs", "1", "--batch-size", "8",
                 "--total-batch-size", "2048", "--eval-every", "0", "--checkpoint-every", "0"])
    assert "8 x 32 x 1 ranks x 8 accumulation steps; 10 steps;" in result.stdout  # 655 windows // 64 per step
    assert sorted(read_log(log_dir)["train"]) == list(range(10))


def test_checkpoint_contents_load_with_weights_only(reference):
    path = os.path.join(reference["log_dir"], "model_00008.pt")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["step"] == 8 and checkpoint["val_loss"] == pytest.approx(reference["log"]["val"][8], abs=1e-4)
    assert checkpoint["config"] == dataclasses.asdict(GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32))
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in checkpoint["model"])
    assert checkpoint["loader"]["position"] == 8 * 256 // 32  # 8 steps of 8 windows
    assert checkpoint["optimizer"]["state"] and checkpoint["args"]["max_steps"] == 12
    assert len(checkpoint["rng"]) == 1 and checkpoint["grad_scaler"] is None


def test_lr_schedule_reference_values():
    lr = lambda step: train_gpt2.get_lr(step, 6e-4, 6e-5, 715, 19073)
    assert lr(0) == pytest.approx(6e-4 / 715)
    assert lr(714) == pytest.approx(6e-4) and lr(715) == pytest.approx(6e-4)  # end of warmup
    assert lr(715 + (19073 - 715) // 2) == pytest.approx((6e-4 + 6e-5) / 2)  # midpoint of the decay
    assert lr(19073) == pytest.approx(6e-5) and lr(30000) == pytest.approx(6e-5)
    assert all(lr(s) >= lr(s + 1) for s in range(715, 19073, 97))


def test_wsd_schedule_warms_up_holds_then_decays_linearly():
    lr = lambda step: train_gpt2.get_lr(step, 1e-3, 1e-4, 10, 100, schedule="wsd", decay_frac=0.2)
    assert lr(0) == pytest.approx(1e-4) and lr(9) == pytest.approx(1e-3)  # the same warmup as cosine
    assert lr(10) == lr(50) == lr(80) == 1e-3  # stable until the last 20 of 100 steps
    assert lr(90) == pytest.approx((1e-3 + 1e-4) / 2) and lr(100) == pytest.approx(1e-4)
    assert train_gpt2.get_lr(5, 1e-3, 1e-4, 0, 10, schedule="wsd", decay_frac=1.0) == pytest.approx(5.5e-4)


def test_lr_printed_by_the_run(reference):
    printed = dict(re.findall(r"step +(\d+) \| loss \S+ \| lr (\S+)", reference["stdout"]))
    assert float(printed["0"]) == pytest.approx(1e-2 / 2)
    assert float(printed["1"]) == pytest.approx(1e-2)
    assert float(printed["11"]) == pytest.approx(train_gpt2.get_lr(11, 1e-2, 1e-3, 2, 12), rel=1e-4)  # 5 digits


def test_ddp_two_processes_match_gradient_accumulation(reference, ddp_reference):
    train, ddp_train = reference["log"]["train"], ddp_reference["log"]["train"]
    assert sorted(ddp_train) == sorted(train)
    for step in train:
        assert ddp_train[step] == pytest.approx(train[step], abs=1e-5), step
    assert ddp_reference["log"]["val"] == reference["log"]["val"]  # val is identical for any world size


def test_resume_after_k_steps_matches_uninterrupted(tmp_path, data_dir, reference):
    log_dir = str(tmp_path)
    shutil.copy(os.path.join(reference["log_dir"], "model_00004.pt"), log_dir)  # a run stopped after 4 steps
    with open(os.path.join(log_dir, "log.txt"), "w") as f:
        f.write("0 train 6.0\n")
    result = run(["--data-dir", data_dir, "--log-dir", log_dir] + TINY)
    assert "resuming from" in result.stdout
    log = read_log(log_dir)
    assert log["train"][0] == 6.0  # appended, not truncated
    after_resume = lambda train: {step: loss for step, loss in train.items() if step >= 4}
    assert after_resume(log["train"]) == after_resume(reference["log"]["train"])
    assert same_weights(os.path.join(log_dir, "model_00012.pt"), os.path.join(reference["log_dir"], "model_00012.pt"))


def resumed_run(tmp_path, reference, args, expect_rc=0, torchrun=None):
    """Resume the reference's 4-step checkpoint with other flags."""
    log_dir = str(tmp_path)
    shutil.copy(os.path.join(reference["log_dir"], "model_00004.pt"), log_dir)
    return log_dir, run(["--data-dir", reference["data_dir"], "--log-dir", log_dir] + TINY + args,
                        expect_rc=expect_rc, torchrun=torchrun)


def test_resume_refuses_flags_that_change_the_run(tmp_path, reference):
    changed = {"--total-batch-size": ("256", "512"), "--max-lr": ("0.01", "0.02"), "--min-lr": ("0.001", "0.002"),
               "--warmup-steps": ("2", "3"), "--weight-decay": ("0.1", "0.2"), "--grad-clip": ("1.0", "0.5"),
               "--skip-spikes": ("0.0", "3.0"), "--dtype": ("fp32", "bf16")}
    log_dir, result = resumed_run(tmp_path, reference, [w for f, (_, new) in changed.items() for w in (f, new)],
                                  expect_rc=2)
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: ") and "start a new run" in error
    for name, (old, new) in changed.items():
        assert f"{name} {old} (now {new})" in error
    assert sorted(os.listdir(log_dir)) == ["model_00004.pt"]  # nothing written


def test_resume_takes_a_run_directory_as_c_does(tmp_path, reference):
    # --resume DIR: that run's newest checkpoint (as -c DIR in every other script), into a new --log-dir
    log_dir = str(tmp_path / "branch")
    result = run(["--data-dir", reference["data_dir"], "--log-dir", log_dir, "--resume", reference["log_dir"]] + TINY)
    assert f"resuming from {os.path.join(reference['log_dir'], 'model_00012.pt')} at step 12" in result.stdout
    empty = run(["--data-dir", reference["data_dir"], "--log-dir", str(tmp_path / "other"), "--resume",
                 str(tmp_path)] + TINY, expect_rc=2)
    assert empty.stderr.startswith(f"error: {tmp_path} holds no checkpoints") and empty.stderr.count("\n") == 1


def test_resume_may_extend_the_run_and_change_cadence_and_batch_split(tmp_path, reference):
    _, result = resumed_run(tmp_path, reference, ["--max-steps", "14", "--eval-every", "7", "--checkpoint-every",
                                                  "7", "--batch-size", "8"])
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    assert notes == ["note: resuming with --max-steps 12 -> 14", "note: resuming with --eval-every 4 -> 7",
                     "note: resuming with --checkpoint-every 4 -> 7", "note: resuming with --batch-size 4 -> 8",
                     "note: the LR schedule is recomputed for 14 steps, continuing from step 4"]
    assert re.search(r"step +13 \| loss ", result.stdout)


def test_a_one_process_checkpoint_resumes_on_two_ranks_with_the_same_losses(tmp_path, reference):
    log_dir, result = resumed_run(tmp_path, reference, [], torchrun=TORCHRUN)
    assert "note: resuming on 1 -> 2 ranks (the same global batch of 256 tokens" in result.stdout
    train = read_log(log_dir)["train"]
    assert sorted(train) == list(range(4, 12))
    for step in train:  # 2 ranks x 1 micro-batch against 1 rank x 2: the DDP tolerance
        assert train[step] == pytest.approx(reference["log"]["train"][step], abs=1e-5), step


def ordered_shards(directory):
    """Train shards whose window w of shard k starts with the token k*1000 + w, so a window names itself."""
    np.save(os.path.join(directory, "edufineweb_val_000000.npy"), np.zeros(100, dtype=np.uint16))
    for k, n in enumerate((6500, 7000, 7500), start=1):
        np.save(os.path.join(directory, f"edufineweb_train_{k:06d}.npy"), (k * 1000 + np.arange(n) // 32).astype(np.uint16))
    return str(directory)


def test_data_order_is_the_projects_own_shuffle_pinned_by_golden_values(tmp_path):
    assert train_gpt2.permutation(10, 1337, 0).tolist() == [4, 3, 5, 0, 8, 6, 9, 2, 1, 7]
    assert train_gpt2.mix64(0) == 0xE220A8397B1DCDAF  # splitmix64's first output for seed 0
    assert sorted(train_gpt2.permutation(1000, 7, 1).tolist()) == list(range(1000))
    train = loader(ordered_shards(tmp_path))
    n = train.windows_per_epoch
    assert [int(train.window(i)[0]) for i in range(8)] == [1064, 1058, 1076, 1091, 1199, 1027, 1066, 1078]
    assert [int(train.window(n + i)[0]) for i in range(4)] == [2000, 2120, 2052, 2217]  # epoch 1: shard 2 first
    older = {**train.state_dict()}
    del older["order"]  # a checkpoint from before: numpy's Generator.permutation
    with pytest.raises(train_gpt2.FatalError, match="numpy's Generator.permutation"):
        loader(str(tmp_path)).load_state_dict(older)


# -----------------------------------------------------------------------------
# every --arch, and Muon with WSD: the same guarantees as GPT-2 (the loss falls, DDP = accumulation, resume is
# bit-exact). One run of each is shared by the three tests, as the gpt2 reference above.

ARCH_RUNS = {"llama": ["--arch", "llama"], "modern": ["--arch", "modern"], "postln": ["--arch", "postln"],
             "modern-muon-wsd": ["--arch", "modern", "--optimizer", "muon", "--schedule", "wsd"]}


@pytest.fixture(scope="module", params=list(ARCH_RUNS))
def arch_runs(request, tmp_path_factory, data_dir):
    flags = TINY + ARCH_RUNS[request.param]
    single, ddp, resumed = (str(tmp_path_factory.mktemp(f"{request.param}-{kind}")) for kind in ("1", "ddp", "resume"))
    stdout = run(["--data-dir", data_dir, "--log-dir", single] + flags).stdout
    run(["--data-dir", data_dir, "--log-dir", ddp] + flags, torchrun=TORCHRUN)
    shutil.copy(os.path.join(single, "model_00004.pt"), resumed)  # a run stopped after 4 steps
    run(["--data-dir", data_dir, "--log-dir", resumed] + flags)
    return dict(name=request.param, single=single, ddp=ddp, resumed=resumed, stdout=stdout)


@pytest.mark.slow
def test_every_arch_loss_falls(arch_runs):
    log = read_log(arch_runs["single"])
    train, val = log["train"], log["val"]
    assert sorted(train) == list(range(12)) and train[0] == pytest.approx(np.log(VOCAB), abs=0.2)
    assert np.mean([train[s] for s in (9, 10, 11)]) < train[0] - 1.5, train
    assert val[12] < val[0] - 1.0
    assert re.search(r"arch \S+: \w+ MLP of width \d+, [\d,]+ parameters, [+-][\d.]+% against gpt2's", arch_runs["stdout"])


@pytest.mark.slow
def test_every_arch_ddp_matches_gradient_accumulation(arch_runs):
    train, ddp_train = read_log(arch_runs["single"])["train"], read_log(arch_runs["ddp"])["train"]
    assert sorted(ddp_train) == sorted(train)
    for step in train:
        assert ddp_train[step] == pytest.approx(train[step], abs=1e-5), step


@pytest.mark.slow
def test_every_arch_resumes_bit_exactly(arch_runs):
    after_resume = lambda log_dir: {s: v for s, v in read_log(log_dir)["train"].items() if s >= 4}
    assert after_resume(arch_runs["resumed"]) == after_resume(arch_runs["single"])
    final = [os.path.join(arch_runs[kind], "model_00012.pt") for kind in ("resumed", "single")]
    assert same_weights(*final)
    a, b = (load_checkpoint(path)["optimizer"] for path in final)
    flat = lambda state: [t for t in torch.utils._pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]
    assert all(torch.equal(x, y) for x, y in zip(flat(a), flat(b))) and len(flat(a)) == len(flat(b)) > 0


def test_modern_muon_wsd_trains_in_bf16(tmp_path, data_dir):
    """--dtype bf16 through train_gpt2.py for the modern recipe (CPU autocast): the loss falls as in fp32."""
    result = run(["--data-dir", data_dir, "--log-dir", str(tmp_path)] + TINY + ["--arch", "modern", "--optimizer",
                 "muon", "--schedule", "wsd", "--dtype", "bf16", "--eval-every", "0", "--checkpoint-every", "0"])
    assert "dtype bf16" in result.stdout
    train = read_log(str(tmp_path))["train"]
    assert sorted(train) == list(range(12)) and np.mean([train[s] for s in (9, 10, 11)]) < train[0] - 1.5, train


def test_resume_refuses_another_arch_or_optimizer(tmp_path, data_dir, reference):
    shutil.copy(os.path.join(reference["log_dir"], "model_00004.pt"), tmp_path)
    result = run(["--data-dir", data_dir, "--log-dir", str(tmp_path)] + TINY + ["--arch", "llama"], expect_rc=2)
    assert re.fullmatch(r"error: \S+model_00004.pt holds a different model \(norm layernorm vs rmsnorm, .*\n",
                        result.stderr)
    result = run(["--data-dir", data_dir, "--log-dir", str(tmp_path)] + TINY + ["--optimizer", "muon"], expect_rc=2)
    assert "was trained with --optimizer adamw, not muon" in result.stderr


@pytest.mark.slow
def test_compiled_modern_muon_run(tmp_path, data_dir):
    """torch.compile (inductor) of the branches gpt2 does not take: RoPE, RMSNorm, QK-norm, ReLU², untied head,
    with Muon; tests/test_model.py traces every arch with fullgraph=True, cheaply."""
    result = run(["--data-dir", data_dir, "--log-dir", str(tmp_path)] + TINY + ARCH_RUNS["modern-muon-wsd"] + [
        "--compile", "--max-steps", "3", "--eval-every", "3", "--checkpoint-every", "0"])
    assert "compile True" in result.stdout and sorted(read_log(tmp_path)["val"]) == [0, 3]


# -----------------------------------------------------------------------------
# periodic work: val, HellaSwag and samples, with torch.compile, under DDP

def write_hellaswag(directory, n=6):
    """A tiny stand-in for hellaswag_val.jsonl, in the official format."""
    os.makedirs(directory, exist_ok=True)
    example = {"activity_label": "Cooking", "ctx_a": "A man is cooking.", "ctx_b": "he", "ctx": "A man is cooking. he",
               "endings": ["stirs the pot.", "flies away.", "reads a book.", "sings."], "split": "val"}
    with open(os.path.join(directory, "hellaswag_val.jsonl"), "w") as f:
        f.writelines(json.dumps({**example, "ind": i, "label": i % 4}) + "\n" for i in range(n))
    return str(directory)


GPT2_VOCAB = ["--vocab-size", "50304", "--max-steps", "4", "--eval-every", "2", "--sample-every", "2",
              "--sample-tokens", "8"]


def test_compiled_ddp_run_does_val_hellaswag_and_samples(tmp_path, data_dir):
    log_dir = str(tmp_path / "log")
    env = {"HELLASWAG_CACHE": write_hellaswag(tmp_path / "hellaswag")}
    result = run(["--data-dir", data_dir, "--log-dir", log_dir] + TINY + GPT2_VOCAB + ["--hellaswag-every", "2",
                 "--compile"], env=env, torchrun=TORCHRUN)
    assert "compile True, world size 2" in result.stdout
    log = read_log(log_dir)
    assert sorted(log["val"]) == sorted(log["hella"]) == [0, 2, 4]
    assert len(re.findall(r"hellaswag acc [\d.]+ acc_norm [\d.]+ harness acc [\d.]+ acc_norm [\d.]+ \(n=6\)",
                          result.stdout)) == 3  # each rank scored 3 examples, the counts were summed
    assert len(re.findall(r"^sample \d: .*$", result.stdout, re.MULTILINE)) == 8  # repr() of each text
    records = read_metrics(log_dir)  # rank 0 alone writes it
    assert [r["step"] for r in records if r["kind"] == "hellaswag"] == [0, 2, 4]
    assert all(r["n"] == 6 and set(r) >= {"acc", "acc_norm", "harness_acc", "harness_acc_norm"}
               for r in records if r["kind"] == "hellaswag")
    sampled = [r for r in records if r["kind"] == "samples"]
    assert [r["step"] for r in sampled] == [2, 4] and all(len(r["samples"]) == 4 for r in sampled)
    # the texts themselves (a repr() quotes a text holding both ' and " differently)
    assert all(text.startswith("Hello, I'm a language model,") for r in sampled for text in r["samples"])


def test_hellaswag_unavailable_offline_is_a_warning(tmp_path, data_dir):
    env = {"HELLASWAG_CACHE": str(tmp_path / "empty"), "HELLASWAG_URL": "http://127.0.0.1:9"}  # nothing listens
    result = run(["--data-dir", data_dir, "--log-dir", str(tmp_path / "log")] + TINY + GPT2_VOCAB + [
        "--max-steps", "1", "--sample-every", "0", "--hellaswag-every", "1"], env=env)
    assert re.search(r"warning: HellaSwag disabled, its data is not available \(.+\)", result.stderr)
    assert "hella" not in read_log(tmp_path / "log")


# -----------------------------------------------------------------------------
# interrupted runs: SIGKILL, torchrun restarts, SIGTERM and Ctrl-C

def assert_no_truncated_files(log_dir):
    for name in os.listdir(log_dir):
        if re.fullmatch(r"model_\d+\.pt", name):
            load_checkpoint(os.path.join(log_dir, name))  # raises on a truncated file
    read_log(log_dir)


def test_sigkill_at_random_moments_then_resume(tmp_path, data_dir, reference):
    log_dir = str(tmp_path)
    args = ["--data-dir", data_dir, "--log-dir", log_dir] + TINY + ["--checkpoint-every", "2",
                                                                    "--keep-checkpoints", "2"]
    slow = {"TRAIN_GPT2_TEST_STEP_SLEEP": "0.05"}
    # killed in the middle of writing its first checkpoint: the temporary file exists, the final name does not
    proc = start(args, {**slow, "TRAIN_GPT2_TEST_CHECKPOINT_SLEEP": "60"})
    deadline = time.time() + 120
    while not any(n.endswith(".tmp") for n in os.listdir(log_dir)) and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.communicate()
    assert any(n.endswith(".tmp") for n in os.listdir(log_dir))
    assert not any(n.endswith(".pt") for n in os.listdir(log_dir))
    # killed at random moments after training has started
    rng = random.Random(0)
    for attempt in range(2):
        proc = start(args, slow)
        wait_for_line(proc, r"\| loss ")
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.communicate()
        assert_no_truncated_files(log_dir)
    result = run(args)
    assert not any(n.endswith(".tmp") for n in os.listdir(log_dir))
    assert read_log(log_dir)["train"] == reference["log"]["train"]
    assert same_weights(os.path.join(log_dir, "model_00012.pt"), os.path.join(reference["log_dir"], "model_00012.pt"))
    assert "resuming from" in result.stdout and find_steps(log_dir) == [10, 12]  # --keep-checkpoints 2


def test_torchrun_restarts_a_killed_rank_and_finishes_identically(tmp_path, data_dir, ddp_reference):
    log_dir = str(tmp_path)
    result = run(["--data-dir", data_dir, "--log-dir", log_dir] + TINY, torchrun=TORCHRUN[:3] + [
        "--standalone", "--max-restarts=2", "--nproc_per_node=2"], env={"TRAIN_GPT2_TEST_KILL_AT": "1:6"})
    assert "resuming from" in result.stdout and re.search(r"model_00004\.pt at step 4", result.stdout)
    final = "model_00012.pt"
    assert same_weights(os.path.join(log_dir, final), os.path.join(ddp_reference["log_dir"], final))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_of_the_current_step_then_resume_is_exact(tmp_path, data_dir, reference, signum):
    log_dir = str(tmp_path)
    args = ["--data-dir", data_dir, "--log-dir", log_dir] + TINY
    proc = start(args, {"TRAIN_GPT2_TEST_STEP_SLEEP": "0.3"})
    wait_for_line(proc, r"step +2 \| loss ")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    assert f"stopping on {signal.Signals(signum).name}" in stderr
    last_step = max(read_log(log_dir)["train"])
    assert 2 <= last_step < 11
    checkpoint = load_checkpoint(os.path.join(log_dir, f"model_{last_step + 1:05d}.pt"))
    assert checkpoint["step"] == last_step + 1
    if signum == signal.SIGTERM:  # one resume is enough to prove the checkpoint is a complete state
        run(args)
        assert read_log(log_dir)["train"] == reference["log"]["train"]
        assert same_weights(os.path.join(log_dir, "model_00012.pt"),
                            os.path.join(reference["log_dir"], "model_00012.pt"))


# -----------------------------------------------------------------------------
# training going wrong: NaN and spiking losses are skipped; too many in a row stop the run

@pytest.fixture(scope="module")
def bad_steps_run(tmp_path_factory, data_dir):
    log_dir = str(tmp_path_factory.mktemp("bad"))
    args = ["--data-dir", data_dir, "--log-dir", log_dir] + TINY + [
        "--max-steps", "16", "--checkpoint-every", "1", "--skip-spikes", "4", "--max-bad-steps", "3"]
    result = run(args, env={"TRAIN_GPT2_TEST_LOSS_FACTOR": "3=nan,11=100,13=nan,14=inf,15=nan"}, expect_rc=3)
    return dict(log_dir=log_dir, result=result, log=read_log(log_dir))


def test_nan_and_spike_updates_are_skipped_with_a_warning(bad_steps_run):
    log_dir, log, stderr = bad_steps_run["log_dir"], bad_steps_run["log"], bad_steps_run["result"].stderr
    assert sorted(log["skip"]) == [3, 11, 13, 14, 15]
    assert np.isnan(log["skip"][3]) and log["skip"][11] > 100
    assert sorted(log["train"]) == [s for s in range(13) if s not in (3, 11)]
    assert re.search(r"step 3: loss nan, grad norm nan: not finite, update skipped", stderr)
    assert re.search(r"step 11: loss [\d.]+, grad norm [\d.]+: a spike, update skipped", stderr)
    # a skipped step leaves the weights as they were
    model = lambda step: os.path.join(log_dir, f"model_{step:05d}.pt")
    assert same_weights(model(3), model(4)) and same_weights(model(11), model(12))
    assert not same_weights(model(4), model(5))


def test_too_many_bad_steps_stop_the_run_and_keep_the_last_good_checkpoint(bad_steps_run):
    log_dir, stderr = bad_steps_run["log_dir"], bad_steps_run["result"].stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "3 steps in a row, up to step 15" in error_lines[0]
    assert "model_00015.pt" in error_lines[0] and "Traceback" not in stderr
    assert find_steps(log_dir) == list(range(1, 16))  # nothing written for the bad step that stopped it
    assert same_weights(os.path.join(log_dir, "model_00013.pt"), os.path.join(log_dir, "model_00015.pt"))


def find_steps(log_dir):
    return [step for step, _ in train_gpt2.find_checkpoints(log_dir)]


# -----------------------------------------------------------------------------
# bad inputs: one line `error: ...`, exit code 2, and nothing written or destroyed

def corrupt_shards(kind, directory, data_dir):
    """A copy of the data dir with one problem."""
    shutil.copytree(data_dir, directory)
    train = os.path.join(directory, "edufineweb_train_000002.npy")
    if kind == "truncated":
        with open(train, "r+b") as f:
            f.truncate(os.path.getsize(train) - 1000)
    elif kind == "garbage":
        with open(train, "wb") as f:
            f.write(os.urandom(3000))
    elif kind == "text":  # numpy's own message for this one advises allow_pickle=True: ours must not
        with open(train, "w") as f:
            f.write("the quick brown fox\n" * 100)
    elif kind == "dtype":
        np.save(train, np.arange(7000, dtype=np.int32))
    elif kind == "magic":
        os.remove(train)
        header = np.zeros(256, dtype=np.int32)
        header[:3] = (20240521, 1, 7000)
        with open(train.replace(".npy", ".bin"), "wb") as f:
            f.write(header.tobytes() + np.arange(7000, dtype=np.uint16).tobytes())
    elif kind == "short":
        np.save(os.path.join(directory, "edufineweb_val_000000.npy"), np.arange(100, dtype=np.uint16))
    elif kind == "empty":
        for name in os.listdir(directory):
            os.remove(os.path.join(directory, name))
    return str(directory)


def evil_checkpoint(path, marker):
    """A checkpoint whose unpickling would create the marker directory."""
    class Evil:
        def __reduce__(self):
            return os.mkdir, (marker,)
    torch.save({"model": Evil(), "config": {}, "step": 1}, path)


BAD_INPUTS = {
    "missing data dir": (["--data-dir", "{tmp}/nowhere"], r"data dir .*nowhere does not exist.*fineweb\.py"),
    "empty data dir": ("empty", r"holds no train shards.*fineweb\.py"),
    "truncated npy": ("truncated", r"train_000002\.npy is not a \.npy token shard \(not a NumPy array file, or "
                                   r"truncated or corrupt\); re-create"),
    "corrupt npy": ("garbage", r"train_000002\.npy is not a \.npy token shard \([^()]*\); re-create it with "
                               r"fineweb\.py$"),
    "text file as shard": ("text", r"train_000002\.npy is not a \.npy token shard \([^()]*\); re-create it with "
                                   r"fineweb\.py$"),
    "wrong dtype": ("dtype", r"train_000002\.npy holds a int32 array .* expected 1-D uint16"),
    "bin wrong magic": ("magic", r"train_000002\.bin is not an llm\.c token shard .*\(wrong magic number"),
    "shard too short": ("short", r"val shards .* fewer than one batch of --batch-size 4"),
    "negative steps": (["--max-steps", "-5"], r"--max-steps must be positive, got -5"),
    "batch does not divide": (["--total-batch-size", "1000"], r"--total-batch-size 1000 is not a multiple of .* = 128"),
    "seq-len above block size": (["--seq-len", "2048", "--total-batch-size", "8192"],
                                 r"--seq-len 2048 is longer than the model's block_size 1024"),
    "different model size": ("resume-other-size", r"model_00004\.pt holds a different model \(n_embd 32 vs 64\)"),
    "corrupt checkpoint": ("resume-corrupt", r"checkpoint .*model_00099\.pt is truncated or damaged at its end .*"
                                             r"Move it out of .* --resume auto, which then takes .*model_00004\.pt"),
    "checkpoint without training state": ("resume-weights-only", r"model_00099\.pt has weights but no training state"),
    "pickle that runs code": ("resume-evil", r"checkpoint .*evil\.pt is unsafe to load: it pickles \S*mkdir"),
    "resume none over checkpoints": ("resume-none", r"--resume none, but .* already holds checkpoints"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_error_and_touches_nothing(case, tmp_path, data_dir, reference):
    setup, pattern = BAD_INPUTS[case]
    log_dir, data, extra = str(tmp_path / "log"), data_dir, []
    os.makedirs(log_dir)
    with open(os.path.join(log_dir, "log.txt"), "w") as f:
        f.write("0 train 6.000000\n")
    if isinstance(setup, list):
        extra = [arg.replace("{tmp}", str(tmp_path)) for arg in setup]
    elif setup.startswith("resume"):
        shutil.copy(os.path.join(reference["log_dir"], "model_00004.pt"), log_dir)
        if setup == "resume-other-size":
            extra = ["--n-embd", "64"]
        elif setup == "resume-corrupt":
            shutil.copy(os.path.join(log_dir, "model_00004.pt"), os.path.join(log_dir, "model_00099.pt"))
            with open(os.path.join(log_dir, "model_00099.pt"), "r+b") as f:
                f.truncate(os.path.getsize(os.path.join(log_dir, "model_00099.pt")) // 2)
        elif setup == "resume-weights-only":  # e.g. a file made for sample.py, not a training checkpoint
            full = load_checkpoint(os.path.join(log_dir, "model_00004.pt"))
            torch.save({"model": full["model"], "config": full["config"]}, os.path.join(log_dir, "model_00099.pt"))
        elif setup == "resume-evil":
            evil_checkpoint(str(tmp_path / "evil.pt"), str(tmp_path / "pwned"))
            extra = ["--resume", str(tmp_path / "evil.pt")]
        elif setup == "resume-none":
            extra = ["--resume", "none"]
    else:
        data = corrupt_shards(setup, tmp_path / "shards", data_dir)
    before = {name: open(os.path.join(log_dir, name), "rb").read() for name in os.listdir(log_dir)}
    result = run(["--data-dir", data, "--log-dir", log_dir] + TINY + extra, expect_rc=2)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert re.search(pattern, result.stderr), result.stderr
    after = {name: open(os.path.join(log_dir, name), "rb").read() for name in os.listdir(log_dir)}
    assert after == before  # no partial file written, nothing truncated or deleted
    assert not os.path.exists(tmp_path / "pwned")  # the pickled code never ran


# -----------------------------------------------------------------------------
# the loader and the flags, in-process

def loader(data_dir, rank=0, world_size=1, batch_size=4, seq_len=32, seed=1337, split="train", shuffle=True):
    return train_gpt2.ShardLoader(data_dir, split, batch_size, seq_len, rank, world_size, seed, shuffle)


def step_windows(loaders, grad_accum_steps):
    """The rows of one optimizer step over all ranks, as a sorted list of token tuples."""
    return sorted(tuple(row.tolist()) for _ in range(grad_accum_steps) for lo in loaders for row in lo.next_batch())


def test_a_step_sees_the_same_windows_for_any_world_size(data_dir):
    one = [loader(data_dir)]
    two = [loader(data_dir, rank, 2) for rank in range(2)]
    four = [loader(data_dir, rank, 4) for rank in range(4)]
    for _ in range(50):  # 50 steps of 16 windows: more than an epoch (655 windows), crossing shards and epochs
        expected = step_windows(one, 4)
        assert step_windows(two, 2) == expected and step_windows(four, 1) == expected


def test_each_epoch_is_a_fresh_permutation_of_all_windows(data_dir):
    train = loader(data_dir)
    n = train.windows_per_epoch
    epochs = [[tuple(train.window(e * n + i).tolist()) for i in range(n)] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1])  # every window once per epoch
    assert epochs[0] != epochs[1]  # in a different order
    unshuffled = loader(data_dir, shuffle=False)
    first = np.load(unshuffled.paths[0])
    assert np.array_equal(unshuffled.window(1), first[32:65])  # window i = tokens[i*T : i*T + T + 1]
    assert [tuple(loader(data_dir).window(i).tolist()) for i in range(n)] == epochs[0]  # seeded: reproducible


def test_llm_c_bin_shards_read_like_npy(tmp_path, data_dir):
    for name in os.listdir(data_dir):
        tokens = np.load(os.path.join(data_dir, name))
        header = np.zeros(256, dtype=np.int32)
        header[:3] = (20240520, 1, len(tokens))
        with open(tmp_path / name.replace(".npy", ".bin"), "wb") as f:
            f.write(header.tobytes() + tokens.tobytes())
    npy, bin_ = loader(data_dir), loader(str(tmp_path))
    for _ in range(3):
        assert torch.equal(npy.next_batch(), bin_.next_batch())


def test_loader_state_round_trip(data_dir):
    a = loader(data_dir)
    for _ in range(5):
        a.next_batch()
    b = loader(data_dir)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_batch(), b.next_batch())
    with pytest.raises(train_gpt2.FatalError, match="seq_len=32, this run has 16"):
        loader(data_dir, seq_len=16).load_state_dict(a.state_dict())


def test_help_shows_every_default_and_demo_preset_yields_to_flags(capsys):
    with pytest.raises(SystemExit):
        train_gpt2.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--max-lr", "0.0006"), ("--min-lr", "6e-05"), ("--warmup-steps", "715"),
                          ("--max-steps", "19073"), ("--total-batch-size", "524288"), ("--seed", "1337"),
                          ("--vocab-size", "50304"), ("--resume", "auto"), ("--data-dir", "edu_fineweb10B")]:
        assert re.search(re.escape(flag) + r" \S+ .*?\(default: " + re.escape(default) + r"\)", help_text), flag
    demo = train_gpt2.parse_args(["--demo", "--max-steps", "7"])
    assert demo.data_dir == "demo_shards" and demo.n_layer == 4 and demo.max_steps == 7
    assert train_gpt2.parse_args([]).max_steps == 19073


# -----------------------------------------------------------------------------
# --wandb: what an offline W&B run recorded, read back from its .wandb files, against log.txt and metrics.jsonl

def wandb_records(path):
    """The protobuf Records of a .wandb file. wandb 0.31 ships no Python reader for it (wandb.sdk.internal.
    datastore is gone), so this reads its framing, LevelDB's log format: a 7-byte header (":W&B", 0xBEE1,
    version 0), then 32 KiB blocks of chunks, each a crc32, a 2-byte length and a type (1 full, 2 first,
    3 middle, 4 last); the payloads are wandb's own wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B" and data[4:6] == (0xBEE1).to_bytes(2, "little") and data[6] == 0
    records, position, pending = [], 7, b""
    while position + 7 <= len(data):
        left_in_block = 32768 - position % 32768
        if left_in_block < 7:  # a block's tail too short for a chunk header is padding
            position += left_in_block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        if kind == 0:  # zero padding at the end of the file
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def read_wandb_dir(wandb_dir):
    """[(run id, config dict, {step: {key: value}})], one per process that logged, oldest first."""
    segments = []
    for run_dir in sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*"))):
        (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
        run_id, config, history = None, {}, {}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
            elif kind == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                row = {}
                for item in record.history.item:  # a logged dict (a table's reference) comes as nested keys
                    *parents, key = item.nested_key or [item.key]
                    functools.reduce(lambda d, k: d.setdefault(k, {}), parents, row)[key] = json.loads(item.value_json)
                history.setdefault(row.pop("_step"), {}).update(row)
        segments.append((run_dir, run_id, config, history))
    return segments


@pytest.mark.slow
def test_wandb_offline_logs_steps_evals_and_samples_once_across_a_resume(tmp_path, data_dir):
    log_dir, wandb_dir = str(tmp_path / "log"), str(tmp_path / "wandb")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": wandb_dir, "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
           "HELLASWAG_CACHE": write_hellaswag(tmp_path / "hellaswag"), "TRAIN_GPT2_TEST_LOSS_FACTOR": "5=nan"}
    os.makedirs(wandb_dir)
    args = ["--data-dir", data_dir, "--log-dir", log_dir] + TINY + GPT2_VOCAB + [
        "--max-steps", "8", "--hellaswag-every", "4", "--sample-every", "4", "--wandb", "tiny-project",
        "--wandb-run", "tiny"]
    proc = start(args, {**env, "TRAIN_GPT2_TEST_STEP_SLEEP": "0.3"})
    wait_for_line(proc, r"step +2 \| loss ")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    stopped_at = max(read_log(log_dir)["train"]) + 1
    assert 3 <= stopped_at < 8
    run(args, env)  # the same command resumes

    segments = read_wandb_dir(wandb_dir)
    assert len(segments) == 2
    (_, first_id, config, first), (_, second_id, _, second) = segments
    assert first_id == second_id == load_checkpoint(os.path.join(log_dir, "model_00008.pt"))["wandb_run_id"]
    assert config["args"]["max_steps"] == 8 and config["args"]["wandb_run"] == "tiny"
    assert config["model"]["n_embd"] == 32 and config["model"]["vocab_size"] == 50304
    assert max(first) < stopped_at <= min(second)  # the resumed process logs no step twice
    history = {**first, **second}

    log, records = read_log(log_dir), read_metrics(log_dir)
    train_steps = {**log["train"], **log["skip"]}
    assert sorted(step for step, row in history.items() if "train/loss" in row) == sorted(train_steps) == list(range(8))
    for record in records:
        row = history[record["step"]]
        if record["kind"] == "train":
            for key in ("lr", "norm", "dt_ms", "tokens_per_sec"):  # metrics.jsonl writes NaN as null
                assert row[f"train/{key}"] == record[key] or record[key] is None and math.isnan(row[f"train/{key}"])
            assert "train/mfu" not in row  # unknown on a CPU: not logged
            assert row["train/skipped"] == (record["step"] == 5)
            if record["step"] == 5:
                assert math.isnan(row["train/loss"])
            else:
                assert row["train/loss"] == record["loss"]
                assert round(row["train/loss"], 6) == log["train"][record["step"]]
        elif record["kind"] == "val":
            assert row["val/loss"] == record["loss"] and round(record["loss"], 4) == log["val"][record["step"]]
        elif record["kind"] == "hellaswag":
            assert {k: row[f"hellaswag/{k}"] for k in ("acc", "acc_norm", "harness_acc", "harness_acc_norm")} == {
                k: record[k] for k in ("acc", "acc_norm", "harness_acc", "harness_acc_norm")}
            assert round(record["acc_norm"], 4) == log["hella"][record["step"]]
        elif record["kind"] == "samples":
            table = row["samples"]
            assert table["_type"] == "table-file"
            run_dir = segments[0][0] if record["step"] < stopped_at else segments[1][0]
            with open(os.path.join(run_dir, "files", table["path"])) as f:
                assert [text for (text,) in json.load(f)["data"]] == record["samples"]
    assert {r["step"] for r in records if r["kind"] == "val"} == {0, 2, 4, 6, 8}
    assert {r["step"] for r in records if r["kind"] == "samples"} == {4, 8}
    assert {step for step, row in history.items() if "val/loss" in row} == {0, 2, 4, 6, 8}


def test_wandb_missing_is_a_one_line_error(tmp_path, data_dir):
    code = ("import runpy, sys; sys.modules['wandb'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, SCRIPT, "--data-dir", data_dir, "--log-dir",
                             str(tmp_path / "log")] + TINY + ["--wandb", "p"], cwd=ROOT, env=environment(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --wandb needs the wandb package: pip install wandb"]


def test_arch_fields_are_overridable_by_flag_for_ablations():
    config = train_gpt2.model_config(train_gpt2.parse_args(["--arch", "modern", "--no-qk-norm", "--mlp", "swiglu",
                                                            "--rope-base", "500000"]))
    assert (config.qk_norm, config.mlp, config.rope_base, config.tie_head, config.norm) == (
        False, "swiglu", 500000.0, False, "rmsnorm")
    assert config.mlp_hidden == 2112  # SwiGLU without --mlp-hidden: GPT-2's parameter count
    assert train_gpt2.model_config(train_gpt2.parse_args(["--bias", "--arch", "llama"])).bias is True
    assert train_gpt2.model_config(train_gpt2.parse_args([])) == GPTConfig(vocab_size=50304)
    with pytest.raises(train_gpt2.FatalError, match="RoPE rotates pairs"):
        train_gpt2.model_config(train_gpt2.parse_args(["--arch", "llama", "--n-embd", "30", "--n-head", "2"]))
