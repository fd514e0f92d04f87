import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from export_hf import export, to_hf_state_dict
from fineweb import get_tokenizer
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)  # padded vocab, like training
SENTENCE = "Hello, I'm a language model! Naïve café, 🤖 世界,  two  spaces\n\nand <|endoftext|> as text."


def run_script(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def save_tiny_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(**TINY)
    model = GPT(config)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(config), "step": 123}, path)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint, exported the way a user does it: python export_hf.py CKPT OUT_DIR."""
    root = tmp_path_factory.mktemp("export")
    checkpoint, out_dir = str(root / "model_00123.pt"), str(root / "hf")
    model = save_tiny_checkpoint(checkpoint)
    result = run_script("export_hf.py", checkpoint, out_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out_dir} from {checkpoint} (step 123)\n"
    return model, checkpoint, out_dir


def test_directory_has_the_hf_files_and_no_leftovers(exported):
    _, _, out_dir = exported
    assert sorted(os.listdir(out_dir)) == ["config.json", "generation_config.json", "merges.txt", "model.safetensors",
                                           "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    assert [name for name in os.listdir(os.path.dirname(out_dir)) if name.startswith(".")] == []  # no temp dirs
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out_dir).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    assert os.stat(os.path.join(out_dir, "model.safetensors")).st_mode & 0o777 == 0o666 & ~umask
    config = json.load(open(os.path.join(out_dir, "config.json")))
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert (config["vocab_size"], config["n_positions"], config["n_ctx"]) == (50257, 64, 64)
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == (2, 2, 64)
    assert config["activation_function"] == "gelu_new" and config["layer_norm_epsilon"] == 1e-5
    assert config["bos_token_id"] == config["eos_token_id"] == 50256 and config["tie_word_embeddings"] is True


def test_weights_are_cropped_transposed_and_untied(exported):
    model, _, out_dir = exported
    weights = load_file(os.path.join(out_dir, "model.safetensors"))
    assert "lm_head.weight" not in weights and not any(key.endswith(".attn.bias") for key in weights)
    ours = model.state_dict()
    assert weights["transformer.wte.weight"].shape == (50257, 64)  # rows 50257..50303 dropped
    assert torch.equal(weights["transformer.wte.weight"], ours["transformer.wte.weight"][:50257])
    assert torch.equal(weights["transformer.h.1.attn.c_attn.weight"], ours["transformer.h.1.attn.c_attn.weight"].t())
    assert torch.equal(weights["transformer.h.0.ln_1.weight"], ours["transformer.h.0.ln_1.weight"])
    assert set(weights) == {key for key in ours if key != "lm_head.weight"}


def test_transformers_loads_it_cleanly_and_the_logits_match(exported):
    from transformers import GPT2LMHeadModel
    model, _, out_dir = exported
    hf_model, info = GPT2LMHeadModel.from_pretrained(out_dir, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    hf_model.eval()
    assert hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()  # re-tied on load
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf_logits = hf_model(idx).logits
        our_logits, _ = model(idx)
    assert hf_logits.shape == (2, 64, 50257)
    torch.testing.assert_close(hf_logits, our_logits[..., :50257], atol=1e-5, rtol=1e-5)


def test_round_trip_through_our_from_pretrained(exported):
    model, _, out_dir = exported
    reloaded = GPT.from_pretrained(out_dir).eval()
    assert reloaded.config.vocab_size == 50257 and reloaded.config.block_size == 64
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx)[0], model(idx)[0][..., :50257], atol=1e-5, rtol=1e-5)


def test_tokenizer_is_gpt2s_and_encodes_like_ours_offline(exported):
    from transformers import AutoTokenizer
    _, _, out_dir = exported
    sha256 = {name: hashlib.sha256(open(os.path.join(out_dir, name), "rb").read()).hexdigest()
              for name in ("merges.txt", "vocab.json")}
    assert sha256 == {"merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
                      "vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    enc = get_tokenizer()
    expected = enc.encode(SENTENCE, allowed_special="all")
    assert tokenizer(SENTENCE)["input_ids"] == expected
    assert tokenizer.decode(expected) == SENTENCE
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == 50256 and tokenizer.model_max_length == 64


def test_sample_py_reads_the_export(exported):
    model, _, out_dir = exported
    result = run_script("sample.py", "-m", out_dir, "--prompt", "Once upon a time", "--num-samples", "1",
                        "--max-new-tokens", "20", "--temperature", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    enc = get_tokenizer()
    prompt = enc.encode("Once upon a time")
    greedy = model.generate(torch.tensor([prompt]), 20, temperature=0)[0, len(prompt):].tolist()
    assert result.stdout == "Once upon a time" + enc.decode(greedy) + "\n"


def test_refuses_a_non_empty_directory_unless_forced(tmp_path):
    checkpoint = str(tmp_path / "model.pt")
    save_tiny_checkpoint(checkpoint, seed=1)
    out_dir = tmp_path / "hf"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    result = run_script("export_hf.py", checkpoint, str(out_dir))
    assert result.returncode == 2
    assert result.stderr == f"error: {out_dir} exists and is not empty; pass --force to replace it\n"
    assert os.listdir(out_dir) == ["notes.txt"]

    export(checkpoint, str(out_dir), dtype="bfloat16", force=True)
    assert "notes.txt" not in os.listdir(out_dir) and "model.safetensors" in os.listdir(out_dir)
    assert load_file(str(out_dir / "model.safetensors"))["transformer.wte.weight"].dtype == torch.bfloat16
    assert json.load(open(out_dir / "config.json"))["torch_dtype"] == "bfloat16"
    assert sorted(os.listdir(tmp_path)) == ["hf", "model.pt"]  # the replaced directory and temp dirs are gone


def test_state_dict_conversion_checks():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    compiled_keys = {"_orig_mod." + key: value for key, value in model.state_dict().items()}
    assert "transformer.wte.weight" in to_hf_state_dict(compiled_keys)  # torch.compile'd checkpoints work too
    untied = dict(model.state_dict())
    untied["lm_head.weight"] = untied["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="tied"):
        to_hf_state_dict(untied)
    small = GPT(GPTConfig(**{**TINY, "vocab_size": 101})).state_dict()
    with pytest.raises(ValueError, match="smaller than GPT-2's 50257"):
        to_hf_state_dict(small)


def test_checkpoint_and_its_export_sample_the_same_text_for_a_seed(exported):
    _, checkpoint, out_dir = exported
    args = ["--prompt", "Once upon a time", "--num-samples", "3", "--max-new-tokens", "12", "--top-k", "50",
            "--seed", "42", "--device", "cpu"]
    ours, theirs = run_script("sample.py", "-c", checkpoint, *args), run_script("sample.py", "-m", out_dir, *args)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout  # the 50304-row checkpoint and the 50257-row export draw the same tokens


def test_refuses_a_pruned_model(tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(**TINY, layer_heads=[2, 1])  # heads.py --save-pruned writes such checkpoints
    torch.save({"model": GPT(config).state_dict(), "config": dataclasses.asdict(config)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="pruned model"):
        export(str(tmp_path / "model.pt"), str(tmp_path / "hf"))


# -----------------------------------------------------------------------------
# --arch llama as LlamaForCausalLM; the other archs are refused in one line

def save_tiny_arch_checkpoint(path, arch, seed=0, **overrides):
    torch.manual_seed(seed)
    config = GPTConfig.preset("gpt2", arch=arch, **{**TINY, **overrides})
    model = GPT(config)
    with torch.no_grad():  # random norm gains, so that a swapped or missing norm shows in the logits
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.1)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(config), "step": 7}, path)
    return model.eval()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def exported_llama(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    checkpoint, out_dir = str(root / "model_00007.pt"), str(root / "hf")
    model = save_tiny_arch_checkpoint(checkpoint, "llama", tie_head=request.param, rope_base=500000.0)
    result = run_script("export_hf.py", checkpoint, out_dir)
    assert result.returncode == 0, result.stderr
    return model, checkpoint, out_dir


def test_llama_export_loads_in_transformers_and_the_logits_match(exported_llama):
    from transformers import LlamaForCausalLM
    model, _, out_dir = exported_llama
    config = json.load(open(os.path.join(out_dir, "config.json")))
    assert config["architectures"] == ["LlamaForCausalLM"] and config["intermediate_size"] == model.config.mlp_hidden
    assert config["tie_word_embeddings"] is model.config.tie_head and config["rope_theta"] == 500000.0
    hf_model, info = LlamaForCausalLM.from_pretrained(out_dir, output_loading_info=True)
    assert not any(info.values()), info
    hf_model.eval()
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx)[0][..., :50257], atol=1e-5, rtol=1e-4)
    weights = load_file(os.path.join(out_dir, "model.safetensors"))
    assert ("lm_head.weight" in weights) is not model.config.tie_head


def test_llama_export_round_trips_through_our_from_pretrained(exported_llama):
    model, _, out_dir = exported_llama
    reloaded = GPT.from_pretrained(out_dir).eval()
    assert (reloaded.config.pos_emb, reloaded.config.rope_base, reloaded.config.tie_head) == (
        "rope", 500000.0, model.config.tie_head)
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx)[0], model(idx)[0][..., :50257], atol=1e-5, rtol=1e-5)


def test_a_nanogpt_checkpoint_exports_as_gpt2_with_zero_biases_and_the_exact_gelu(tmp_path):
    """nanoGPT's default model: no biases (bias=False) and nn.GELU()'s erf, saved under model_args and iter_num in
    out/ckpt.pt. GPT2LMHeadModel holds it exactly with zero biases and activation_function "gelu": transformers' own
    GPT-2 gives our logits, and -c out/ finds the ckpt.pt."""
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPTConfig(**TINY, bias=False, mlp="gelu_exact")
    model = GPT(config).eval()
    with torch.no_grad():  # random norm gains, so that a missing norm shows in the logits
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.1)
    model_args = dict(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                      block_size=config.block_size, bias=False, vocab_size=50304, dropout=0.0)
    os.makedirs(tmp_path / "out")
    torch.save({"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()}, "model_args": model_args,
                "iter_num": 10, "best_val_loss": torch.tensor(3.0), "config": {"dataset": "openwebtext"}},
               tmp_path / "out" / "ckpt.pt")
    result = run_script("export_hf.py", str(tmp_path / "out"), str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {tmp_path / 'hf'} from {tmp_path / 'out' / 'ckpt.pt'} (step 10)\n"
    assert json.load(open(tmp_path / "hf" / "config.json"))["activation_function"] == "gelu"
    hf_model = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        ours = model(idx)[0][..., :50257]
        torch.testing.assert_close(hf_model(idx).logits, ours, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(GPT.from_pretrained(str(tmp_path / "hf")).eval()(idx)[0], ours, atol=1e-5,
                                   rtol=1e-5)
        tanh = GPT(dataclasses.replace(config, mlp="gelu")).eval()
        tanh.load_state_dict(model.state_dict())
        assert (tanh(idx)[0][..., :50257] - ours).abs().max() > 1e-5  # the GELU matters at this tolerance


def test_a_gpt2_config_we_do_not_compute_is_refused_on_reading(tmp_path, exported):
    _, _, out_dir = exported
    for key, value in [("activation_function", "relu"), ("layer_norm_epsilon", 1e-6)]:
        shutil.copytree(out_dir, tmp_path / key)
        config = json.load(open(tmp_path / key / "config.json"))
        json.dump({**config, key: value}, open(tmp_path / key / "config.json", "w"))
        with pytest.raises(ValueError, match=f"{key}"):
            GPT.from_pretrained(str(tmp_path / key))


@pytest.mark.parametrize("arch", ["modern", "postln"])
def test_other_archs_are_refused_in_one_line(tmp_path, arch):
    checkpoint = str(tmp_path / "model.pt")
    save_tiny_arch_checkpoint(checkpoint, arch)
    result = run_script("export_hf.py", checkpoint, str(tmp_path / "hf"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: export_hf.py writes --arch gpt2 (GPT2LMHeadModel) and --arch llama "
                                    "(LlamaForCausalLM) only; this model has ")
    assert ("norm_position=post" if arch == "postln" else "qk_norm=True") in result.stderr
    assert not os.path.exists(tmp_path / "hf")


# -----------------------------------------------------------------------------
# --push-to-hub, against tests/hub_standin.py: the hub is unreachable from tests, so a small server on 127.0.0.1
# answers the endpoints huggingface_hub calls, and HF_ENDPOINT points the client at it

TRAIN = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--batch-size", "4", "--seq-len", "32",
         "--total-batch-size", "256", "--max-steps", "8", "--warmup-steps", "2", "--eval-every", "4",
         "--val-tokens", "2048", "--checkpoint-every", "8", "--hellaswag-every", "0", "--sample-every", "0",
         "--device", "cpu"]
HELLASWAG = {"acc": 0.25, "acc_norm": 0.3, "harness_acc": 0.26, "harness_acc_norm": 0.31, "n": 10}


def hub_env(endpoint, home, token="dummy"):
    """The environment of a user whose hub is `endpoint`: HF_HOME is the test's own (no saved login, an empty
    download cache), and HF_HUB_OFFLINE is unset so the client talks to the stand-in."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_ENDPOINT": endpoint, "HF_HOME": str(home)}
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_TOKEN_PATH"):
        env.pop(name, None)
    if token:
        env["HF_TOKEN"] = token
    return env


def run_in(env, script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny training run on shards in a folder named edu_fineweb10B (fineweb.py's default, which plot_log.py
    counts as FineWeb-Edu), plus the HellaSwag record train_gpt2.py writes at step 8 (offline there is no
    HellaSwag data to evaluate)."""
    from test_train_gpt2 import write_shards
    root = tmp_path_factory.mktemp("run")
    data_dir, log_dir = write_shards(root / "edu_fineweb10B"), str(root / "log")
    result = run_script("train_gpt2.py", "--data-dir", data_dir, "--log-dir", log_dir, *TRAIN)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(log_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 8, "kind": "hellaswag", **HELLASWAG}) + "\n")
    with open(os.path.join(log_dir, "log.txt"), "a") as f:
        f.write("8 hella 0.3000\n")
    return log_dir


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from hub_standin import HubStandIn
    with HubStandIn(tmp_path_factory.mktemp("hub")) as hub:
        yield hub


@pytest.fixture(scope="module")
def pushed(tiny_run, hub, tmp_path_factory):
    """python export_hf.py log/ out/ --push-to-hub someone/tiny, as a user runs it."""
    root = tmp_path_factory.mktemp("push")
    env, out_dir = hub_env(hub.url, root / "hf_home"), str(root / "out")
    result = run_in(env, "export_hf.py", tiny_run, out_dir, "--push-to-hub", "someone/tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == (f"wrote {out_dir} from {os.path.join(tiny_run, 'model_00008.pt')} (step 8)\n"
                             f"pushed {out_dir} to {hub.url}/someone/tiny "
                             f"(commit {hub.repos['someone/tiny']['sha']})\n")
    return env, out_dir


def test_push_uploads_the_export_with_a_model_card_and_the_loss_plot(pushed, hub):
    _, out_dir = pushed
    files = hub.files("someone/tiny")
    assert sorted(files) == sorted(os.listdir(out_dir)) == [
        "README.md", "config.json", "generation_config.json", "loss.png", "merges.txt", "model.safetensors",
        "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    assert all(files[name] == open(os.path.join(out_dir, name), "rb").read() for name in files)
    assert files["loss.png"].startswith(b"\x89PNG")
    assert {"POST /api/repos/create", "POST /api/validate-yaml", "POST /api/models/someone/tiny/commit/main"} \
        <= set(hub.requests)


def test_model_card_metadata_and_results_come_from_the_run(pushed, hub, tiny_run):
    import yaml
    card = hub.files("someone/tiny")["README.md"].decode()
    _, metadata, body = card.split("---\n", 2)
    metadata = yaml.safe_load(metadata)
    assert {k: metadata[k] for k in ("library_name", "pipeline_tag", "license", "datasets", "language")} == {
        "library_name": "transformers", "pipeline_tag": "text-generation", "license": "mit",
        "datasets": ["HuggingFaceFW/fineweb-edu"], "language": "en"}
    val_loss = float(open(os.path.join(tiny_run, "log.txt")).read().split("8 val ")[1].split()[0])
    results = metadata["model-index"][0]["results"]
    assert results[0]["dataset"]["type"] == "HuggingFaceFW/fineweb-edu"
    assert results[0]["metrics"] == [{"type": "loss", "value": val_loss, "name": "val loss"}]
    assert [m["value"] for m in results[1]["metrics"]] == [0.3, 0.31]  # both HellaSwag conventions
    assert "GPT-2 (`GPT2LMHeadModel`): 2 layers, 2 heads, 64-dimensional embeddings" in body
    assert "Tokens trained: 2,048 (8 steps of 256 tokens)." in body
    assert f"- val loss: {val_loss:.4f} (step 8)" in body
    assert "acc 0.2500, acc_norm 0.3000; lm-eval-harness style acc 0.2600, acc_norm 0.3100" in body
    assert "![training loss](loss.png)" in body and "python sample.py -m someone/tiny" in body
    assert 'AutoModelForCausalLM.from_pretrained("someone/tiny")' in body


def test_model_card_command_trains_the_same_run_again(pushed, hub, tiny_run):
    """The command on the card, parsed by train_gpt2.py, gives back every flag the checkpoint recorded."""
    import shlex
    import train_gpt2
    from checkpoint import load_checkpoint
    body = hub.files("someone/tiny")["README.md"].decode()
    command = shlex.split(body.split("```bash\n")[1].split("\n```")[0])
    assert command[:2] == ["python", "train_gpt2.py"] and "--n-embd" in command
    recorded = load_checkpoint(os.path.join(tiny_run, "model_00008.pt"))["args"]
    assert vars(train_gpt2.parse_args(command[2:])) == recorded


def test_sample_py_loads_the_pushed_model_by_its_hub_name(pushed, tiny_run):
    env, _ = pushed
    args = ["--seed", "1", "--max-new-tokens", "8", "--device", "cpu"]
    theirs = run_in(env, "sample.py", "-m", "someone/tiny", *args)
    ours = run_script("sample.py", "-c", os.path.join(tiny_run, "model_00008.pt"), *args)
    assert theirs.returncode == 0 and ours.returncode == 0, theirs.stderr[-2000:] + ours.stderr[-2000:]
    assert theirs.stdout == ours.stdout
    # later, offline (a cluster node without internet): the cached model, at once, without the hub's retries
    offline = run_in({**env, "HF_ENDPOINT": "http://127.0.0.1:9"}, "sample.py", "-m", "someone/tiny", *args)
    assert offline.returncode == 0 and offline.stdout == ours.stdout and "Retrying" not in offline.stderr


def test_model_card_of_a_bare_checkpoint_says_what_is_not_recorded(tmp_path):
    """A checkpoint with no run beside it (no log.txt, metrics.jsonl or args): a card that claims nothing."""
    import yaml
    save_tiny_checkpoint(str(tmp_path / "model.pt"))
    export(str(tmp_path / "model.pt"), str(tmp_path / "hf"), repo_id="me/bare", license="apache-2.0")
    assert "loss.png" not in os.listdir(tmp_path / "hf")  # no log, no plot
    _, metadata, body = (tmp_path / "hf" / "README.md").read_text().split("---\n", 2)
    assert yaml.safe_load(metadata) == {"library_name": "transformers", "pipeline_tag": "text-generation",
                                        "license": "apache-2.0", "language": "en"}  # no datasets, no model-index
    for line in ("The training command was not recorded in the checkpoint.", "Steps trained: 123 (tokens per step "
                 "not recorded).", "- val loss: not recorded", "- HellaSwag: not in the run's logs"):
        assert line in body


def assert_one_line_error(result, start):
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert result.stderr.startswith(start), result.stderr


def test_a_repo_of_someone_else_is_refused_in_one_line(tiny_run, hub, tmp_path):
    result = run_in(hub_env(hub.url, tmp_path / "home"), "export_hf.py", tiny_run, str(tmp_path / "out"),
                    "--push-to-hub", "someone-else/tiny")
    assert_one_line_error(result, "error: the token may not write to someone-else/tiny (403 Forbidden): ")
    assert result.stderr.endswith(f"; nothing was changed on the hub, and the export is in {tmp_path / 'out'}\n")
    assert "someone-else/tiny" not in hub.repos


def test_an_unreachable_hub_is_one_line(tiny_run, tmp_path):
    import socket
    with socket.socket() as s:  # a port nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_in(hub_env(f"http://127.0.0.1:{port}", tmp_path / "home"), "export_hf.py", tiny_run,
                    str(tmp_path / "out"), "--push-to-hub", "someone/tiny")
    assert_one_line_error(result, f"error: cannot reach the Hugging Face hub at http://127.0.0.1:{port} (")


def test_no_token_is_one_line_before_anything_is_written(tiny_run, hub, tmp_path):
    result = run_in(hub_env(hub.url, tmp_path / "home", token=None), "export_hf.py", tiny_run,
                    str(tmp_path / "out"), "--push-to-hub", "someone/tiny2")
    assert_one_line_error(result, "error: --push-to-hub: no Hugging Face token: log in with `hf auth login`")
    assert not os.path.exists(tmp_path / "out") and "someone/tiny2" not in hub.repos


def test_a_push_that_fails_after_creating_the_repo_says_so(tiny_run, hub, tmp_path):
    hub.commit_status = 400
    try:
        result = run_in(hub_env(hub.url, tmp_path / "home"), "export_hf.py", tiny_run, str(tmp_path / "out"),
                        "--push-to-hub", "someone/broken", "--private")
    finally:
        hub.commit_status = None
    assert_one_line_error(result, "error: the hub at ")
    assert result.stderr.endswith("; the repo someone/broken was created but holds no files; delete it or push "
                                  "again\n")
    assert hub.files("someone/broken") == {} and hub.repos["someone/broken"]["private"] is True


def test_a_push_leaves_the_repo_holding_exactly_the_export(tiny_run, hub, tmp_path):
    """A second push to a repo whose earlier push had another file (another layout's weights, here): the repo then
    holds the export's files only, so transformers cannot load the stale one; the earlier commit keeps it."""
    env, out_dir = hub_env(hub.url, tmp_path / "home"), str(tmp_path / "out")
    assert run_in(env, "export_hf.py", tiny_run, out_dir, "--push-to-hub", "someone/mirror").returncode == 0
    upload = ("from huggingface_hub import HfApi; HfApi().upload_file(path_or_fileobj=b'old', "
              "path_in_repo='pytorch_model.bin', repo_id='someone/mirror')")
    assert subprocess.run([sys.executable, "-c", upload], env=env, timeout=120).returncode == 0
    stale_commit = hub.repos["someone/mirror"]["sha"]
    result = run_in(env, "export_hf.py", tiny_run, out_dir, "--force", "--push-to-hub", "someone/mirror")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(hub.files("someone/mirror")) == sorted(os.listdir(out_dir))
    assert "pytorch_model.bin" in hub.files("someone/mirror", stale_commit)
