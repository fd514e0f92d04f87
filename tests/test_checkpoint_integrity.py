"""
A checkpoint damaged in place (its bytes overwritten after it was written: a failing disk, a bad copy) is refused by
every script that reads one, in one line on stderr that names the file and what to do, never a traceback. torch.save
writes a zip archive with a CRC-32 per member; checkpoint.load_checkpoint checks them all before torch.load. The scripts
run as subprocesses with real flags on one tiny run trained here (module-scoped: each process start costs seconds).
"""
import dataclasses
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import train_gpt2
from checkpoint import (CheckpointDamaged, ResumeError, check_checkpoint_file, checkpoint_config, load_checkpoint,
                        resolve_checkpoint_path)
from model import GPT, GPTConfig
from test_hellaswag import FIXTURE, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# n_embd 64 with the padded GPT-2 vocabulary, which sample.py and hellaswag.py need: a 40 MB checkpoint
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--batch-size", "4", "--seq-len", "32",
        "--total-batch-size", "128", "--warmup-steps", "1", "--eval-every", "0", "--val-tokens", "256",
        "--checkpoint-every", "2", "--hellaswag-every", "0", "--sample-every", "0"]
DAMAGE = 4096  # bytes overwritten, as in the report: 4 KiB, a page or a disk sector's worth
CRC_FAILS = re.compile(r"is damaged \(member '[^']+' fails its CRC-32 check\): it was corrupted after it was written")


def environment():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(*args, timeout=240):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=environment(), capture_output=True,
                          text=True, timeout=timeout)


def data_span(path, tensor):
    """(start, size) of the bytes of the zip member that stores a tensor."""
    data = tensor.contiguous().numpy().tobytes()
    with zipfile.ZipFile(path) as archive:
        info = next(info for info in archive.infolist() if info.file_size == len(data) and archive.read(info) == data)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        name_size, extra_size = struct.unpack("<2H", f.read(30)[26:30])
    return info.header_offset + 30 + name_size + extra_size, info.file_size


def overwrite(path, offset, byte, size=DAMAGE):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([byte]) * size)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained 4 steps (model_00002.pt, model_00004.pt), and where in the newest checkpoint its weights
    and its optimizer state lie: the largest of each, the token embedding and its AdamW second moment."""
    tmp = tmp_path_factory.mktemp("integrity")
    shards = tmp / "shards"
    shards.mkdir()
    rng = np.random.default_rng(0)
    np.save(shards / "edufineweb_val_000000.npy", rng.integers(0, 512, 4000).astype(np.uint16))
    np.save(shards / "edufineweb_train_000001.npy", rng.integers(0, 512, 8000).astype(np.uint16))
    log_dir = tmp / "log"
    result = run("train_gpt2.py", "--data-dir", shards, "--log-dir", log_dir, *TINY, "--max-steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    newest = str(log_dir / "model_00004.pt")
    checkpoint = load_checkpoint(newest)
    second_moments = [state["exp_avg_sq"] for state in checkpoint["optimizer"]["state"].values()]
    spans = {"weights": data_span(newest, checkpoint["model"]["transformer.wte.weight"]),
             "optimizer": data_span(newest, max(second_moments, key=torch.Tensor.numel))}
    assert all(size > 4 * DAMAGE for _, size in spans.values())
    tasks = tmp / "tasks"  # a local lm-eval task, so that eval_harness.py reaches its model without the network
    tasks.mkdir()
    (tasks / "tiny_local.yaml").write_text(f"""task: tiny_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tasks / "documents.jsonl"}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
""")
    write_jsonl(tasks / "documents.jsonl", [{"text": "A short document."}])
    return dict(log_dir=str(log_dir), shards=str(shards), spans=spans, tasks=str(tasks),
                hellaswag=write_jsonl(tmp / "hellaswag.jsonl", FIXTURE[:2]))


def damaged_run(trained, directory, part, byte):
    """A copy of the run whose newest checkpoint has 4 KiB of `byte` written into the middle of `part`."""
    shutil.copytree(trained["log_dir"], directory)
    start, size = trained["spans"][part]
    overwrite(os.path.join(directory, "model_00004.pt"), start + size // 2, byte)
    return str(directory), os.path.join(directory, "model_00004.pt"), os.path.join(directory, "model_00002.pt")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the loaders, with their real flags: {name: (run dir, damaged file, out dir, trained) -> argv}
LOADERS = {
    "sample.py -c DIR": lambda run_dir, path, out, t: ["sample.py", "-c", run_dir, "--max-new-tokens", "2",
                                                       "--num-samples", "1", "--device", "cpu"],
    "hellaswag.py -c": lambda run_dir, path, out, t: ["hellaswag.py", "-c", path, "--data-file", t["hellaswag"],
                                                      "--device", "cpu"],
    "eval_harness.py -c": lambda run_dir, path, out, t: ["eval_harness.py", "-c", path, "--tasks", "tiny_local",
                                                         "--include-path", t["tasks"], "--device", "cpu"],
    "export_hf.py": lambda run_dir, path, out, t: ["export_hf.py", path, out],
    "heads.py -c": lambda run_dir, path, out, t: ["heads.py", "-c", path, "--data-dir", t["shards"], "--tokens",
                                                  "256", "--out", out, "--device", "cpu"],
    "app.py -c": lambda run_dir, path, out, t: ["app.py", "-c", path, "--port", free_port(), "--device", "cpu"],
}
DAMAGES = {"zeros in the weights": ("weights", 0x00), "0xff in the optimizer state": ("optimizer", 0xff)}


def assert_one_line_naming(result, path):
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr[-3000:]
    assert f"checkpoint {path} " in result.stderr and CRC_FAILS.search(result.stderr), result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_refuses_a_damaged_checkpoint_in_one_line(trained, tmp_path, loader, damage):
    run_dir, path, previous = damaged_run(trained, tmp_path / "log", *DAMAGES[damage])
    result = run(*LOADERS[loader](run_dir, path, str(tmp_path / "out"), trained))
    assert_one_line_naming(result, path)
    assert result.stderr.rstrip().endswith(f"use another checkpoint, e.g. {previous}"), result.stderr
    assert not os.path.exists(tmp_path / "out")  # nothing written from a damaged file


@pytest.mark.slow
def test_resume_refuses_a_damaged_checkpoint_and_names_the_one_auto_takes_next(trained, tmp_path):
    for damage, (part, byte) in DAMAGES.items():
        log_dir, path, previous = damaged_run(trained, tmp_path / damage.replace(" ", "_"), part, byte)
        before = {name: os.path.getsize(os.path.join(log_dir, name)) for name in os.listdir(log_dir)}
        result = run("train_gpt2.py", "--data-dir", trained["shards"], "--log-dir", log_dir, *TINY, "--max-steps", "6")
        assert_one_line_naming(result, path)
        assert result.returncode == 2
        assert result.stderr.rstrip().endswith(f"Move it out of {log_dir} (keep it aside to inspect if you like) and "
                                               f"run again with --resume auto, which then takes {previous}")
        assert {name: os.path.getsize(os.path.join(log_dir, name)) for name in os.listdir(log_dir)} == before
    os.rename(path, path + ".damaged")  # what the message says to do: the same command then resumes from step 2
    result = run("train_gpt2.py", "--data-dir", trained["shards"], "--log-dir", log_dir, *TINY, "--max-steps", "6")
    assert result.returncode == 0 and f"resuming from {previous} at step 2" in result.stdout, result.stderr[-3000:]


def test_resume_messages_without_a_previous_checkpoint_or_from_elsewhere(trained, tmp_path):
    config = checkpoint_config(load_checkpoint(os.path.join(trained["log_dir"], "model_00004.pt")))
    alone = tmp_path / "alone"
    alone.mkdir()
    path = str(alone / "model_00004.pt")
    shutil.copy(os.path.join(trained["log_dir"], "model_00004.pt"), path)
    start, size = trained["spans"]["weights"]
    overwrite(path, start + size // 2, 0xff)
    with pytest.raises(ResumeError, match=re.escape(f"--resume auto, which then finds no checkpoint in "
                                                              f"{alone} and starts from scratch")):
        train_gpt2.load_resume_checkpoint(path, config, "adamw", str(alone))
    with pytest.raises(ResumeError, match=re.escape(f"Pass another --resume, e.g. --resume auto, which then "
                                                              f"takes {trained['log_dir']}/model_00004.pt")):
        train_gpt2.load_resume_checkpoint(path, config, "adamw", trained["log_dir"])


@pytest.mark.slow
def test_a_clean_checkpoint_still_loads(trained):
    result = run("sample.py", "-c", trained["log_dir"], "--max-new-tokens", "3", "--num-samples", "1", "--seed", "0",
                 "--device", "cpu")
    assert result.returncode == 0 and "model_00004.pt" in result.stderr, result.stderr[-3000:]
    for _, path in train_gpt2.find_checkpoints(trained["log_dir"]):
        check_checkpoint_file(path)
        check_checkpoint_file(path, workers=4)


# -----------------------------------------------------------------------------
# the check itself, in-process: every place the damage can land, every way a file can be wrong


def small_checkpoint(path):
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=101, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 101, (1, 16)), torch.randint(0, 101, (1, 16)))[1].backward()
    optimizer.step()
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(config), "optimizer":
                optimizer.state_dict()}, path)
    return str(path)


@pytest.mark.parametrize("byte", [0x00, 0xff])
def test_4_kib_of_damage_anywhere_is_refused_by_name(tmp_path, byte):
    """Every 4 KiB window at every 256th byte: data, local headers, data descriptors, the zip directory, its end."""
    path = small_checkpoint(tmp_path / "model_00001.pt")
    intact = open(path, "rb").read()
    assert len(intact) > 8 * DAMAGE
    load_checkpoint(path)
    damaged = str(tmp_path / "model_00002.pt")
    for offset in range(0, len(intact), 256):
        window = bytes([byte]) * min(DAMAGE, len(intact) - offset)
        if intact[offset:offset + DAMAGE] == window:
            continue  # nothing changed there
        with open(damaged, "wb") as f:
            f.write(intact[:offset] + window + intact[offset + len(window):])
        with pytest.raises(CheckpointDamaged) as refused:
            load_checkpoint(damaged)
        message = str(refused.value)
        assert message.startswith(f"checkpoint {damaged} is ") and "\n" not in message, (offset, message)
        assert message.endswith(f"use another checkpoint, e.g. {path}"), (offset, message)


def test_every_single_flipped_bit_in_a_member_is_caught(tmp_path):
    path = small_checkpoint(tmp_path / "model_00001.pt")
    start, size = data_span(path, load_checkpoint(path)["model"]["lm_head.weight"])
    for offset in range(start, start + size, size // 97):
        for bit in (0, 7):
            damaged = bytearray(open(path, "rb").read())
            damaged[offset] ^= 1 << bit
            open(path + ".bad", "wb").write(damaged)
            with pytest.raises(CheckpointDamaged, match="fails its CRC-32 check"):
                load_checkpoint(path + ".bad")


def test_truncated_garbage_empty_and_unsafe_files_get_our_own_sentence(tmp_path):
    path = small_checkpoint(tmp_path / "model_00001.pt")
    intact = open(path, "rb").read()
    for length in (10, 1000, len(intact) // 2, len(intact) - 1):
        (tmp_path / "model_00002.pt").write_bytes(intact[:length])
        with pytest.raises(CheckpointDamaged, match=r"model_00002\.pt is truncated or damaged at its end"):
            load_checkpoint(str(tmp_path / "model_00002.pt"))
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(CheckpointDamaged) as refused:
        load_checkpoint(str(tmp_path / "garbage.pt"))
    assert "is not a PyTorch checkpoint: it is not the zip archive that torch.save writes" in str(refused.value)
    assert "mmap" not in str(refused.value) and "_use_new_zipfile_serialization" not in str(refused.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointDamaged, match=r"empty\.pt is empty"):
        load_checkpoint(str(tmp_path / "empty.pt"))

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    torch.save({"model": Evil(), "config": {}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt is unsafe to load: it pickles \S*mkdir") as refused:
        load_checkpoint(str(tmp_path / "evil.pt"))
    assert not isinstance(refused.value, CheckpointDamaged) and not (tmp_path / "pwned").exists()


def test_a_directory_without_checkpoints_names_the_subdirectory_that_has_them(tmp_path):
    (tmp_path / "log" / "demo").mkdir(parents=True)
    (tmp_path / "log" / "demo" / "model_00150.pt").write_bytes(b"")
    (tmp_path / "log" / "log.txt").write_text("")
    log = str(tmp_path / "log") + "/"
    with pytest.raises(FileNotFoundError) as missing:
        resolve_checkpoint_path(log)
    assert str(missing.value) == f"{log} holds no checkpoints; {log}demo/ does: pass -c {log}demo/"
    with pytest.raises(FileNotFoundError, match=re.escape(f"does: pass {log}demo/")):
        resolve_checkpoint_path(log, flag="")  # export_hf.py takes the path without -c
    (tmp_path / "log" / "other").mkdir()
    (tmp_path / "log" / "other" / "model_00001.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as missing:
        resolve_checkpoint_path(log)
    assert str(missing.value) == (f"{log} holds no checkpoints; its subdirectories {log}demo/, {log}other/ do: pass "
                                  f"one of them, e.g. -c {log}other/")
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoints \(model_XXXXX\.pt, or nanoGPT's ckpt\.pt\): "
                       r"train into it first"):
        resolve_checkpoint_path(str(tmp_path))  # log/ holds none itself, and no deeper search is made
