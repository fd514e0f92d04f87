import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from fineweb import get_tokenizer
from model import GPT, GPTConfig
from sample import encode_prompt, main, stream_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)  # padded vocab, like training


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = GPTConfig(**TINY)
    model = GPT(config)
    path = tmp_path_factory.mktemp("ckpt") / "model_00010.pt"
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(config), "step": 10}, path)
    return str(path)


def run_sample(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


# -----------------------------------------------------------------------------
# tokens


def test_encode_prompt_empty_and_special():
    enc = get_tokenizer()
    assert encode_prompt(enc, "") == [50256]
    assert encode_prompt(enc, "<|endoftext|>Hello") == [50256] + enc.encode("Hello")


def test_stream_text_never_prints_half_a_character():
    enc = get_tokenizer()
    text = "héllo 🤖 世界 naïve"
    tokens = enc.encode(text)
    assert len(tokens) > len(text.split())  # the emoji and the CJK characters are split across tokens
    pieces = list(stream_text(enc, tokens))
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    # bytes that never complete a character are replaced exactly as tiktoken's decode replaces them
    broken = enc.encode("🤖")[:2] + enc.encode(" ok")
    assert "".join(stream_text(enc, broken)) == enc.decode(broken) == "\ufffd ok"


def test_stream_text_yields_before_the_tokens_run_out():
    enc = get_tokenizer()

    def tokens_then_crash():
        yield from enc.encode("Hello world")
        raise RuntimeError("generation is still running")

    pieces = stream_text(enc, tokens_then_crash())
    assert next(pieces) == "Hello" and next(pieces) == " world"


def test_bad_flags_raise_a_clear_error(checkpoint):
    with pytest.raises(ValueError, match="--top-p must be in"):
        main(["-c", checkpoint, "--top-p", "1.5"])
    with pytest.raises(ValueError, match="--temperature must be >= 0"):
        main(["-c", checkpoint, "--temperature", "-1"])
    with pytest.raises(ValueError, match="at least 1"):
        main(["-c", checkpoint, "--num-samples", "0"])


# -----------------------------------------------------------------------------
# the CLI, as a user runs it


def test_same_seed_same_text_streamed_or_not(checkpoint):
    flags = ["-c", checkpoint, "--prompt", "The meaning of life is", "--num-samples", "1", "--max-new-tokens", "60",
             "--temperature", "0.8", "--top-k", "50", "--top-p", "0.95", "--seed", "42", "--device", "cpu"]
    streamed = run_sample(*flags)
    flags[1] = os.path.dirname(checkpoint)  # -c a run directory: its newest checkpoint, the same one
    whole = run_sample(*flags, "--no-stream")  # a second process, the other code path: the same text
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.startswith("The meaning of life is") and len(streamed.stdout) > 60
    assert streamed.stdout == whole.stdout
    assert "seed 42" in streamed.stderr and f"{checkpoint}: " in whole.stderr


def test_several_samples_differ_and_seeds_matter(checkpoint, capsys):
    result = run_sample("-c", checkpoint, "--num-samples", "3", "--max-new-tokens", "20", "--seed", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    headers = [line for line in lines if line.startswith("--- sample")]
    assert headers == ["--- sample 1/3 ---", "--- sample 2/3 ---", "--- sample 3/3 ---"]
    texts = result.stdout.split("---\n")[1:]
    assert len(set(texts)) == 3 and all(text.startswith("Hello, I'm a language model,") for text in texts)
    main(["-c", checkpoint, "--num-samples", "3", "--max-new-tokens", "20", "--seed", "1", "--device", "cpu"])
    assert capsys.readouterr().out == result.stdout  # in-process too
    main(["-c", checkpoint, "--num-samples", "3", "--max-new-tokens", "20", "--seed", "2", "--device", "cpu"])
    assert capsys.readouterr().out != result.stdout


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    result = run_sample("-c", str(tmp_path / "model_99999.pt"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: checkpoint {tmp_path / 'model_99999.pt'} does not exist: pass a ")
    assert len(result.stderr.splitlines()) == 1
    empty = run_sample("-c", str(tmp_path))  # a run directory without checkpoints
    assert empty.returncode == 2 and empty.stderr.startswith(f"error: {tmp_path} holds no checkpoints")


def test_help_and_a_bad_flag_answer_before_torch_is_imported():
    """--help and argument errors must not wait for torch's import (seconds on a busy machine)."""
    code = ("import runpy, sys\n"
            "for argv in (['--help'], ['-m', 'gpt2', '--top-p', '3']):\n"
            "    sys.argv = ['sample.py', *argv]\n"
            "    try:\n"
            "        runpy.run_path('sample.py', run_name='__main__')\n"
            "    except SystemExit as e:\n"
            "        print('exit', e.code, 'torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "exit 0 torch imported: False" in result.stderr
    assert "error: --top-p must be in (0, 1], got 3.0\nexit 2 torch imported: False" in result.stderr
