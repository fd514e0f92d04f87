"""eval_harness.py as a user meets it: the script runs lm-eval's own simple_evaluate on local task yamls (no
network) and its numbers are checked against hellaswag.py, a direct perplexity computation and sample.py."""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import lm_eval  # requirements-dev.txt installs it (via requirements-eval.txt)

import fineweb
import hellaswag
import sample
from checkpoint import model_from_checkpoint
from model import ARCHS, GPT, GPTConfig
from test_hellaswag import FIXTURE, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)  # padded vocab, like training
SEEDS = [0, 1]
ARCH = {0: "gpt2", 1: "modern"}  # the second random model: RoPE, RMSNorm, ReLU^2, QK-norm, untied head, no biases
EOT = 50256

# perplexity documents: one shorter than block_size, one a few windows long, one with odd whitespace
DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    " ".join(f"Sentence number {i} is about the weather, which was {['fine', 'grey', 'wet'][i % 3]}." for i in range(20)),
    "tabs\tand\n\nnewlines  and naïve café text 😀",
]
PROMPTS = ["Hello, I'm a language model,", "The capital of France is", "<|endoftext|>Once upon a time"]
MAX_GEN_TOKS = 16


def tiny_checkpoint(directory, seed):
    torch.manual_seed(seed)
    config = GPTConfig(**TINY, **ARCHS[ARCH[seed]])
    model = GPT(config)
    if seed == 0:  # a sharper distribution than the N(0, 0.02) init: scores far apart (as in test_hellaswag.py)
        torch.nn.init.normal_(model.transformer.wte.weight, std=0.5)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "model_00001.pt")
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(config), "step": 1}, path)
    return path


def write_tasks(directory):
    """Three local tasks: lm-eval's own installed hellaswag yaml (and, through it, its utils.py) with only the
    data source changed, a perplexity task and a short generation task, all reading jsonl files written here."""
    os.makedirs(directory, exist_ok=True)
    hellaswag_jsonl = write_jsonl(os.path.join(directory, "hellaswag.jsonl"), FIXTURE)
    installed = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "hellaswag", "hellaswag.yaml")
    assert os.path.isfile(installed), "lm-eval's hellaswag task moved"
    files = {
        "hellaswag_local.yaml": f"""include: {installed}
task: hellaswag_local
dataset_path: json
dataset_kwargs:
  data_files:
    train: {hellaswag_jsonl}
    validation: {hellaswag_jsonl}
""",
        "perplexity_local.yaml": f"""task: perplexity_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {os.path.join(directory, "documents.jsonl")}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
        "generate_local.yaml": f"""task: generate_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {os.path.join(directory, "prompts.jsonl")}
output_type: generate_until
test_split: test
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n", ","]
  max_gen_toks: {MAX_GEN_TOKS}
  do_sample: false
metric_list:
  - metric: exact_match
""",
    }
    for name, text in files.items():
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
    write_jsonl(os.path.join(directory, "documents.jsonl"), [{"text": text} for text in DOCUMENTS])
    write_jsonl(os.path.join(directory, "prompts.jsonl"), [{"prompt": p, "target": "Paris"} for p in PROMPTS])
    return directory


def environment(tmp):
    return dict(os.environ, HF_HOME=os.path.join(tmp, "hf_home"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false")


def run_eval_harness(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval_harness.py"), *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{seed: (checkpoint path, results JSON)} of one eval_harness.py run per random model, on all three tasks."""
    tmp = str(tmp_path_factory.mktemp("eval_harness"))
    tasks = write_tasks(os.path.join(tmp, "tasks"))
    out = {}
    for seed in SEEDS:
        checkpoint = tiny_checkpoint(os.path.join(tmp, f"run{seed}"), seed)
        results = os.path.join(tmp, f"results{seed}.json")
        result = run_eval_harness("-c", os.path.dirname(checkpoint), "--tasks",
                                  "hellaswag_local,perplexity_local,generate_local", "--include-path", tasks,
                                  "--batch-size", 5, "--device", "cpu", "--out", results, "--log-samples",
                                  env=environment(tmp))
        assert result.returncode == 0, result.stderr[-3000:]
        assert re.search(r"\|\s*Tasks\s*\|", result.stdout) and "hellaswag_local" in result.stdout  # lm-eval's table
        with open(results) as f:
            out[seed] = (checkpoint, json.load(f))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_lm_eval_hellaswag_equals_hellaswag_py_harness_style(runs, seed):
    checkpoint, results = runs[seed]
    ours = hellaswag.evaluate(model_from_checkpoint(checkpoint), FIXTURE, "cpu")
    theirs = results["results"]["hellaswag_local"]
    assert theirs["acc,none"] == ours["harness_acc"]
    assert theirs["acc_norm,none"] == ours["harness_acc_norm"]
    assert results["n-samples"]["hellaswag_local"]["effective"] == len(FIXTURE)
    # document by document: the same log-likelihood for every ending, and the same two predictions
    scores = hellaswag.score_examples(model_from_checkpoint(checkpoint), FIXTURE, "cpu")
    for doc in results["samples"]["hellaswag_local"]:
        score = scores[doc["doc_id"]]
        assert [ll for ll, _ in doc["filtered_resps"]] == pytest.approx(score["harness_logprob"], rel=1e-6, abs=1e-6)
        assert doc["acc"] == float(score["harness_pred"] == score["label"])
        assert doc["acc_norm"] == float(score["harness_pred_norm"] == score["label"])


def direct_loglikelihood(model, text, block_size):
    """log p(text | <|endoftext|>) by chunks of block_size predicted tokens, each chunk conditioned on the
    block_size tokens before its end: one unbatched, unpadded forward per chunk, float64 sum."""
    stream = [EOT] + fineweb.get_tokenizer().encode(text)
    total = 0.0
    for start in range(1, len(stream), block_size):
        end = min(start + block_size, len(stream))
        inputs = stream[max(0, end - 1 - block_size):end - 1]
        with torch.no_grad():
            logits = model(torch.tensor([inputs]))[0][0].float()[:, :50257]
        logprobs = torch.log_softmax(logits, dim=-1).double()
        targets = stream[end - len(inputs):end]
        for position in range(end - start):  # the last (end - start) predictions are this chunk's
            row = len(inputs) - (end - start) + position
            total += logprobs[row, targets[row]].item()
    return total


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_perplexity_task_equals_a_direct_computation(runs, seed):
    checkpoint, results = runs[seed]
    model = model_from_checkpoint(checkpoint).eval()
    assert len(fineweb.get_tokenizer().encode(DOCUMENTS[1])) > 3 * TINY["block_size"]  # several windows
    loglikelihood = sum(direct_loglikelihood(model, text, TINY["block_size"]) for text in DOCUMENTS)
    words = sum(len(re.split(r"\s+", text)) for text in DOCUMENTS)  # lm-eval's word count
    n_bytes = sum(len(text.encode("utf-8")) for text in DOCUMENTS)
    theirs = results["results"]["perplexity_local"]
    assert theirs["bits_per_byte,none"] == pytest.approx(-loglikelihood / n_bytes / math.log(2), rel=1e-6)
    assert theirs["byte_perplexity,none"] == pytest.approx(math.exp(-loglikelihood / n_bytes), rel=1e-6)
    assert theirs["word_perplexity,none"] == pytest.approx(math.exp(-loglikelihood / words), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_generate_until_equals_sample_py_greedy(runs, seed, capsys):
    checkpoint, results = runs[seed]
    generations = {s["doc"]["prompt"]: s["filtered_resps"][0] for s in results["samples"]["generate_local"]}
    assert sorted(generations) == sorted(PROMPTS)
    for prompt in PROMPTS:
        sample.main(["-c", checkpoint, "--prompt", prompt, "--temperature", "0", "--num-samples", "1",
                     "--no-stream", "--max-new-tokens", str(MAX_GEN_TOKS), "--device", "cpu"])
        printed = capsys.readouterr().out
        continuation = printed[len(prompt):-1]  # sample.py prints the prompt, the continuation and a newline
        expected = continuation.split("\n")[0].split(",")[0].split("<|endoftext|>")[0]  # the stop sequences
        assert generations[prompt] == expected


def test_missing_lm_eval_is_a_one_line_error(tmp_path):
    code = ("import runpy, sys; sys.modules['lm_eval'] = None; sys.argv = ['eval_harness.py', '-m', 'gpt2', "
            "'--tasks', 'hellaswag']; runpy.run_path('eval_harness.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: eval_harness.py needs lm-evaluation-harness, which is not installed: "
        "pip install -r requirements-eval.txt"]


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--limit", "-1"], "--limit must be positive"),
    (["--include-path", "no/such/dir"], "is not a directory"),
])
def test_bad_flags_are_one_line_errors(tmp_path, args, message):
    result = run_eval_harness("-c", tmp_path, "--tasks", "hellaswag", *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_eval_harness_smoke(tmp_path):
    """The benchmark runs and finds the two models' scores equal (its figures are not checked)."""
    env = dict(environment(str(tmp_path)), TQDM_DISABLE="1")
    result = subprocess.run([sys.executable, "-m", "dev.bench_eval_harness", "--n-examples", "4",
                             "--rounds", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "32"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"examples/s: median [\d.]+x", result.stdout)
    assert "(equal)" in result.stdout, result.stdout
