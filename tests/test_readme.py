"""
README.md's commands as printed, each taken from the README's own code blocks and run in a fresh directory (so
`log/`, `log/demo/`, `demo_shards/` and `edu_fineweb10B/` are the paths they mean), with only a tiny model, a
local HellaSwag file and smaller workloads appended. It catches docs that drift from the scripts, such as a
checkpoint name the run never writes or a directory the demo does not use.
"""
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from test_train_gpt2 import ROOT, environment, write_hellaswag, write_shards

TINY_TRAIN = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--batch-size", "4", "--seq-len", "32",
              "--total-batch-size", "128", "--max-steps", "4", "--warmup-steps", "1", "--eval-every", "2",
              "--val-tokens", "256", "--checkpoint-every", "2", "--hellaswag-every", "0", "--sample-every", "0"]
# the real run: the first README command that is (True) or starts with (False) each of these, in this order
REAL_RUN = [("python train_gpt2.py", True), ("python hellaswag.py -c log/", False), ("python sample.py -c log/", False),
            ("python export_hf.py log/", False), ("python plot_log.py", True)]


def readme_lines():
    """Every shell line of README.md's code blocks that runs a python script, split as the shell splits it; a line
    `A && B` gives its parts (a pip install is left out: the tests run in the installed environment)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["python"]:
                    commands.append(words)
    return commands


def find(prefix, whole=False):
    words = prefix.split()
    found = [c for c in readme_lines() if c == words or (not whole and c[:len(words)] == words)]
    assert found, f"README.md has no command {'' if whole else 'starting with '}{prefix!r}"
    return found[0]


def run_script(command, cwd, extra=(), timeout=300):
    assert command[0] == "python", command
    result = subprocess.run([sys.executable, os.path.join(ROOT, command[1])] + command[2:] + list(extra), cwd=cwd,
                            env=environment(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}: exit {result.returncode}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_the_real_run_sequence_runs_as_printed(tmp_path):
    write_shards(tmp_path / "edu_fineweb10B")  # the default --data-dir
    hellaswag_file = os.path.join(write_hellaswag(tmp_path / "fixture"), "hellaswag_val.jsonl")
    extra = {"train_gpt2.py": TINY_TRAIN, "hellaswag.py": ["--data-file", hellaswag_file],
             "sample.py": ["--max-new-tokens", "4", "--seed", "1"]}
    outputs = [run_script(find(prefix, whole), tmp_path, extra.get(prefix.split()[1], [])) for prefix, whole in REAL_RUN]
    train, hella, sample, export, plot = outputs
    assert "wrote log/model_00004.pt" in train
    assert re.search(r"hellaswag n=6 acc=", hella)
    assert "log/model_00004.pt" in sample and sample.count("Hello, I'm a language model,") >= 5
    assert "from log/model_00004.pt (step 4)" in export and os.path.isfile(tmp_path / "log" / "hf" / "config.json")
    assert os.path.isfile(tmp_path / "log" / "plot.png")


def demo_block():
    """The commands of README's "What you can do with the demo checkpoint" block, in order."""
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## What you can do with the demo checkpoint", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    commands = [shlex.split(part, comments=True) for line in block.splitlines() for part in line.split("&&")]
    return [words for words in commands if words[:1] == ["python"]]


def start_app(command, cwd):
    """app.py as printed, on a free port: it must come up and serve."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(cwd, "app.log"), "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, command[1])] + command[2:] + ["--port", str(port)],
                            cwd=cwd, env=environment({"GRADIO_ANALYTICS_ENABLED": "False"}), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if f"http://127.0.0.1:{port}" in open(log.name).read():
                return open(log.name).read()
            time.sleep(0.5)
        raise AssertionError(f"{' '.join(command)} did not come up:\n{open(log.name).read()[-3000:]}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_the_quickstart_and_the_demo_checkpoint_block_run_as_printed(tmp_path):
    quickstart = find("python train_gpt2.py --demo", whole=True)
    assert find("python fineweb.py --demo", whole=True)  # writes demo_shards/ (tested in test_fineweb.py)
    write_shards(tmp_path / "demo_shards")  # tiny stand-ins for the demo corpus's shards
    run_script(quickstart, tmp_path, TINY_TRAIN)
    assert os.path.isfile(tmp_path / "log" / "demo" / "model_00004.pt")
    hellaswag_file = os.path.join(write_hellaswag(tmp_path / "fixture"), "hellaswag_val.jsonl")
    smaller = {"heads.py": ["--tokens", "512", "--similarity-tokens", "256", "--random-draws", "1", "--no-iterative"],
               "hellaswag.py": ["--data-file", hellaswag_file], "sample.py": ["--max-new-tokens", "4"]}
    commands = demo_block()
    assert [c[1] for c in commands] == ["sample.py", "plot_log.py", "export_hf.py", "sample.py", "heads.py",
                                        "hellaswag.py", "app.py"]
    outputs = {}
    for command in commands:
        if command[1] == "app.py":
            outputs["app.py"] = start_app(command, tmp_path)
        else:
            outputs[command[1]] = run_script(command, tmp_path, smaller.get(command[1], []))
    demo = tmp_path / "log" / "demo"
    assert os.path.isfile(demo / "plot.png") and os.path.isfile(demo / "hf" / "config.json")
    assert os.path.isfile(demo / "heads_00004" / "results.json")
    assert re.search(r"hellaswag n=6 acc=", outputs["hellaswag.py"])
    assert "log/demo/model_00004.pt" in outputs["app.py"] or "log/demo/" in outputs["app.py"]
    assert sorted(os.listdir(tmp_path)) == ["app.log", "demo_shards", "fixture", "log"]  # nothing outside log/
