"""
dev/study_arch.py in its tiny form: both studies run end to end on the shards the tests write, as docs/studies.md's
tables were made (python -m dev.study_arch ...), so the scripts stay runnable; and the GPU preset's flags are ones
train_gpt2.py takes, at GPT-2 124M's shape.
"""
import json
import os
import subprocess
import sys

import train_gpt2
from dev import study_arch
from test_train_gpt2 import ROOT, environment, write_shards

TINY = ["--seeds", "1", "--max-steps", "4", "--eval-every", "2", "--val-tokens", "512"]


def study(*args):
    result = subprocess.run([sys.executable, "-m", "dev.study_arch", *args], cwd=ROOT, env=environment(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_postln_runs_and_tabulates(tmp_path):
    data_dir, out_dir = write_shards(tmp_path / "shards"), str(tmp_path / "out")
    out = study("postln", "--data-dir", data_dir, "--out-dir", out_dir, *TINY, "--lr-factors", "1", "--warmups", "0")
    with open(os.path.join(out_dir, "postln.json")) as f:
        summary = json.load(f)
    rows = summary["rows"]
    assert [(row["norm_position"], row["max_lr"], row["warmup"], row["runs"]) for row in rows] == [
        ("pre", 3e-3, 0, 1), ("post", 3e-3, 0, 1)]
    for row in rows:  # 4 steps of the demo model on learnable shards: no divergence, a real val loss
        assert row["diverged"] == 0 and 0 < row["final_val_mean"] < 11 and row["max_grad_norm"] > 0
    assert out.splitlines()[-2].startswith("| pre-LN | 0.003 (1x) | 0 | 0/1 | ")
    table = open(os.path.join(out_dir, "postln.md")).read().splitlines()
    assert len(table) == 6 and table == out.splitlines()[-6:]
    for row in rows:  # where the largest norm was, and spikes by --skip-spikes' rule (none in 4 steps: too few)
        assert row["max_grad_norm_steps"][0] in range(4) and row["first_spikes"] == [None]
    # --collect tabulates the finished runs again without training
    assert study("postln", "--data-dir", data_dir, "--out-dir", out_dir, *TINY, "--lr-factors", "1", "--warmups", "0",
                 "--collect").splitlines()[-6:] == table
    # --results-from: another machine's summary; its runs are not trained again, and the table is the same
    again = study("postln", "--data-dir", data_dir, "--out-dir", str(tmp_path / "elsewhere"), *TINY, "--lr-factors",
                  "1", "--warmups", "0", "--results-from", os.path.join(out_dir, "postln.json"))
    assert "train_gpt2.py" not in again and again.splitlines()[-6:] == table


def test_postln_runs_what_matters_first(monkeypatch):
    # on a GPU with minutes to spare, the runs that finish before a timeout should answer the question: the first
    # seed of every cell, the 10x LR with no warmup first, Pre and Post side by side (--jobs 2 runs them together)
    started = []
    monkeypatch.setattr(study_arch, "train", lambda args, name, flags: started.append(name) or None)
    study_arch.postln(study_arch.parse_args(["postln", "--preset", "gpt2-124m", "--seeds", "1", "2"]))
    assert started[:6] == ["pre-lr10x-w0-s1", "post-lr10x-w0-s1", "pre-lr10x-w100-s1", "post-lr10x-w100-s1",
                           "pre-lr3x-w0-s1", "post-lr3x-w0-s1"]
    assert len(started) == len(set(started)) == 24 and started[12] == "pre-lr10x-w0-s2"


def test_recipes_run_and_tabulate(tmp_path):
    data_dir, out_dir = write_shards(tmp_path / "shards"), str(tmp_path / "out")
    study("recipes", "--data-dir", data_dir, "--out-dir", out_dir, *TINY, "--jobs", "2")
    with open(os.path.join(out_dir, "recipes.json")) as f:
        rows = json.load(f)["rows"]
    assert [row["recipe"] for row in rows] == list(study_arch.RECIPES)
    assert rows[0]["step_time_ratio"] == 1.0 and all(row["params"] > 0 for row in rows)
    assert all(0 < row["final_val_mean"] < 11 and row["tokens_per_sec"] > 0 for row in rows)
    assert all(t is None or t == s * 512 for row in rows  # the demo preset's 512 tokens per step
               for s, t in zip(row["steps_to_gpt2_final"], row["tokens_to_gpt2_final"]))


def test_recipes_at_gpu_scale_run_two_and_keep_their_final_checkpoints(tmp_path):
    # issue 22 part 2 compares gpt2 with modern+Muon+WSD, and part 3 runs heads.py on the better one's checkpoint
    data_dir, out_dir = write_shards(tmp_path / "shards"), str(tmp_path / "out")
    out = study("recipes", "--data-dir", data_dir, "--out-dir", out_dir, *TINY, "--recipes", "gpt2", "modern+muon+wsd",
                "--checkpoint-at-end")
    assert [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:] == [
        "| gpt2", "| modern+muon+wsd"]
    for name in ("gpt2-s1", "modern+muon+wsd-s1"):
        assert train_gpt2.find_checkpoints(os.path.join(out_dir, "recipes", name))[-1][0] == 4


def test_first_spike_is_the_first_loss_far_above_the_recent_ones():
    steady = [(step, 3.0 + 0.01 * (step % 3)) for step in range(20)]  # mean 3.01, std 0.0082
    assert study_arch.first_spike(steady) is None
    assert study_arch.first_spike(steady + [(20, 3.03), (21, 3.2), (22, 9.0)]) == 21  # about 22 standard deviations up
    assert study_arch.first_spike(steady[:5] + [(5, 30.0)]) is None  # under 10 losses of history: no judgement
    assert study_arch.first_spike(steady[:5] + [(5, float("nan"))]) == 5  # a non-finite loss is one at once


def test_the_gpu_preset_is_gpt2_124m_as_train_gpt2_reads_it():
    preset = study_arch.PRESETS["gpt2-124m"]
    args = train_gpt2.parse_args(preset["flags"] + ["--data-dir", "shards"])
    config = train_gpt2.model_config(args)
    assert (config.n_layer, config.n_head, config.n_embd, config.norm_position) == (12, 12, 768, "pre")
    assert (args.seq_len, args.total_batch_size, args.batch_size, args.hellaswag_every) == (1024, 65536, 16, 0)
    plan = study_arch.parse_args(["postln", "--preset", "gpt2-124m"])
    assert (plan.max_steps, plan.warmups, plan.val_tokens) == (300, [0, 100], 65536)
    assert [preset["max_lr"] * factor for factor in plan.lr_factors] == [6e-4, 6e-4 * 3, 6e-4 * 10]
