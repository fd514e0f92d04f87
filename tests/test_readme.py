"""
README.md's commands as printed: train -> hellaswag -> sample -> export -> plot, each taken from the README's own
code blocks and run in a fresh directory (so `log/` and `edu_fineweb10B/` are the defaults they mean), with only
a tiny model and a local HellaSwag file added. It catches docs that drift from the scripts, such as a checkpoint
name the run never writes.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest

from test_train_gpt2 import ROOT, environment, write_hellaswag, write_shards

# the first README command that is (True) or starts with (False) each of these, in this order
SEQUENCE = [("python train_gpt2.py", True), ("python hellaswag.py -c log/", False), ("python sample.py -c log/", False),
            ("python export_hf.py log/", False), ("python plot_log.py", True)]
TINY_TRAIN = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--batch-size", "4", "--seq-len", "32",
              "--total-batch-size", "128", "--max-steps", "4", "--warmup-steps", "1", "--eval-every", "2",
              "--val-tokens", "256", "--checkpoint-every", "2", "--hellaswag-every", "0", "--sample-every", "0"]


def readme_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = [shlex.split(line, comments=True) for line in f if line.startswith("python ")]
    commands = []
    for command, whole in SEQUENCE:
        words = command.split()
        found = [line for line in lines if line == words or (not whole and line[:len(words)] == words)]
        assert found, f"README.md has no command {'' if whole else 'starting with '}{command!r}"
        commands.append(found[0])
    return commands


@pytest.mark.slow
def test_readme_sequence_runs_as_printed(tmp_path):
    write_shards(tmp_path / "edu_fineweb10B")  # the default --data-dir
    hellaswag_file = os.path.join(write_hellaswag(tmp_path / "fixture"), "hellaswag_val.jsonl")
    extra = {"train_gpt2.py": TINY_TRAIN, "hellaswag.py": ["--data-file", hellaswag_file],
             "sample.py": ["--max-new-tokens", "4", "--seed", "1"]}
    outputs = []
    for command in readme_commands():
        assert command[0] == "python", command
        script = command[1]
        result = subprocess.run([sys.executable, os.path.join(ROOT, script)] + command[2:] + extra.get(script, []),
                                cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{' '.join(command)}: exit {result.returncode}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout + result.stderr)
    train, hella, sample, export, plot = outputs
    assert "wrote log/model_00004.pt" in train
    assert re.search(r"hellaswag n=6 acc=", hella)
    assert "log/model_00004.pt" in sample and sample.count("Hello, I'm a language model,") >= 5
    assert "from log/model_00004.pt (step 4)" in export and os.path.isfile(tmp_path / "gpt2-ours" / "config.json")
    assert os.path.isfile(tmp_path / "log" / "plot.png")
