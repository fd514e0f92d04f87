"""
Every file this repository reads or writes for a model: our checkpoints (written atomically, checked member by
member on every load, the training state a resume needs), build-nanogpt's and nanoGPT's checkpoints, and Hugging
Face GPT-2 and Llama weights. model.py is the model only; the scripts come here for files.

    import checkpoint
    model = checkpoint.load_model("log/", None, "cpu")          # -c: a checkpoint file or a run directory's newest
    model = checkpoint.load_model(None, "gpt2", "cpu")          # -m: a hub name or a local Hugging Face directory
    state = checkpoint.load_checkpoint("log/model_19073.pt")    # the dict train_gpt2.py saved, CRC-32s checked first

A checkpoint (log/model_{step:05d}.pt) is a dict: model (a plain state_dict), config (every GPTConfig field, a plain
dict), step, val_loss, optimizer, loader, rng (one entry per rank), grad_scaler, args, evals_done, recent_losses,
bad_steps, wandb_run_id, elapsed_s. torch.save writes it as a zip archive, and weights_only=True reads it back
without running pickled code.
"""

import concurrent.futures
import dataclasses
import json
import mmap
import os
import random
import re
import struct
import time
import zipfile
import zlib

import numpy as np
import torch

from fineweb import write_atomically
from model import ARCHS, GPT2_VOCAB_SIZE, PRESETS, GPT, GPTConfig, RMSNorm, clean_state_dict

# -----------------------------------------------------------------------------
# our checkpoints: find, check, read


# build-nanogpt pickles its GPTConfig dataclass (defined in the script it ran, so `__main__.GPTConfig`) into its
# checkpoints. weights_only loading refuses unknown classes; this inert stand-in, allowed by name, receives the
# fields as plain attributes and runs no code of the file's.
PeerGPTConfig = type("GPTConfig", (), {"__module__": "__main__", "__doc__": "build-nanogpt's config, as data"})
torch.serialization.add_safe_globals([PeerGPTConfig])


def checkpoint_config(checkpoint):
    """GPTConfig from our checkpoints ('config' dict), build-nanogpt's ('config' object) or nanoGPT's
    ('model_args' dict; its bias=False drops the biases of Linears and LayerNorms, as ours does, and its MLP is
    nn.GELU()'s exact erf, mlp="gelu_exact", where GPT-2 and build-nanogpt use the tanh approximation). A field
    missing from an older checkpoint takes GPT-2's value; keys GPTConfig does not know (nanoGPT's dropout) are
    ignored."""
    nanogpt = "model_args" in checkpoint
    config = checkpoint.get("model_args") or checkpoint["config"]
    config = vars(config) if isinstance(config, PeerGPTConfig) else config
    sizes = ["block_size", "vocab_size", "n_layer", "n_head", "n_embd"]
    if not isinstance(config, dict) or any(name not in config for name in sizes):
        raise ValueError(f"the checkpoint's config {config!r:.200} does not give all of {sizes}")
    fields = {field.name: config[field.name] for field in dataclasses.fields(GPTConfig) if field.name in config}
    if nanogpt:
        fields.setdefault("mlp", "gelu_exact")
    return GPTConfig(**fields)


def checkpoint_step(checkpoint):
    """The optimizer steps a checkpoint had: ours and build-nanogpt's 'step', nanoGPT's 'iter_num'; None if neither."""
    return checkpoint.get("step", checkpoint.get("iter_num"))


def find_checkpoints(log_dir):
    """[(step, path)] of a log dir's model_XXXXX.pt files, oldest first."""
    names = os.listdir(log_dir) if os.path.isdir(log_dir) else []
    return sorted((int(m[1]), os.path.join(log_dir, n)) for n in names if (m := re.fullmatch(r"model_(\d+)\.pt", n)))


def resolve_checkpoint_path(path, flag="-c "):
    """What -c means in every script: a checkpoint file, or a run directory (its newest model_XXXXX.pt).
    `flag`: how the script's command line takes the path, for the hint to a subdirectory that holds checkpoints."""
    if os.path.isdir(path):
        found = find_checkpoints(path)
        if found:
            return found[-1][1]
        runs = [os.path.join(path, name, "") for name in sorted(os.listdir(path))
                if find_checkpoints(os.path.join(path, name))]
        if len(runs) == 1:
            raise FileNotFoundError(f"{path} holds no checkpoints; {runs[0]} does: pass {flag}{runs[0]}")
        if runs:
            raise FileNotFoundError(f"{path} holds no checkpoints; its subdirectories {', '.join(runs)} do: pass one "
                                    f"of them, e.g. {flag}{runs[-1]}")
        if os.path.isfile(os.path.join(path, "ckpt.pt")):  # nanoGPT's out_dir holds one checkpoint by this name
            return os.path.join(path, "ckpt.pt")
        raise FileNotFoundError(f"{path} holds no checkpoints (model_XXXXX.pt, or nanoGPT's ckpt.pt): train into it "
                                f"first, or pass a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass a checkpoint file or a run directory "
                                f"such as log/")
    return path


def fallback_checkpoint(path, log_dir=None):
    """The checkpoint that a run directory (-c DIR, --resume auto) would give if `path` were moved out of it: the
    newest other model_XXXXX.pt in `log_dir` (default: path's own directory), or None."""
    log_dir = log_dir or os.path.dirname(path) or "."
    others = [other for _, other in find_checkpoints(log_dir) if os.path.abspath(other) != os.path.abspath(path)]
    return others[-1] if others else None


class CheckpointDamaged(ValueError):
    """A checkpoint file whose bytes are not what torch.save wrote. `problem` completes "checkpoint PATH ..."; the
    message adds what to do, which load_resume_checkpoint rewrites for a resume."""

    def __init__(self, path, problem):
        self.path, self.problem = path, problem
        other = fallback_checkpoint(path)
        advice = f"use another checkpoint, e.g. {other}" if other else "restore it from a copy, or train again"
        super().__init__(f"checkpoint {path} {problem}; {advice}")


# torch.save writes a zip archive of stored (uncompressed) members, each a local header, its bytes and a data
# descriptor (CRC-32 and sizes), then the zip directory, which repeats each member's name, offset and CRC-32
ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature, version, flags, method, time, date, CRC, sizes, name, extra
ZIP_END = b"PK\x05\x06"  # the end-of-directory record's signature, in the last 64 KiB of a zip archive
CORRUPTED = "it was corrupted after it was written"


def check_checkpoint_file(path, workers=None):
    """Raise CheckpointDamaged unless `path` is a whole zip archive in which every member's local header agrees
    with the zip directory and every member's bytes have the CRC-32 the directory and data descriptor give. Reads
    the file once, memory-mapped like torch.load(mmap=True), so the load that follows finds it in the page cache;
    members go to `workers` threads (default: torch's thread count), as zlib.crc32 releases the GIL."""
    with open(path, "rb") as f:
        try:
            with zipfile.ZipFile(f) as archive:
                members = sorted(archive.infolist(), key=lambda member: member.header_offset)
                directory_start = archive.start_dir
        except Exception:  # on a damaged directory zipfile raises BadZipFile, but also OSError, struct.error, ...
            raise CheckpointDamaged(path, unreadable_zip_problem(f)) from None
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    next_starts = [member.header_offset for member in members[1:]] + [directory_start]
    with mapped, concurrent.futures.ThreadPoolExecutor(workers or min(torch.get_num_threads(), 8)) as pool:
        problems = list(pool.map(zip_member_problem, [mapped] * len(members), members, next_starts))
    if members and members[0].header_offset != 0:
        problems.insert(0, f"is damaged (its zip directory puts the first member at byte {members[0].header_offset})"
                           f": {CORRUPTED}")
    problem = next((problem for problem in problems if problem), None)
    if problem:
        raise CheckpointDamaged(path, problem)


def unreadable_zip_problem(f):
    """Why zipfile cannot open a file: cut short or damaged at its end (where the zip directory is), or not a zip
    archive at all."""
    f.seek(0)
    head = f.read(4)
    f.seek(max(0, f.seek(0, os.SEEK_END) - (1 << 16) - 22))
    if not head:
        return "is empty: its write or copy was cut short"
    if head == b"PK\x03\x04" or ZIP_END in f.read():
        return ("is truncated or damaged at its end (its zip directory, which torch.save writes last, is missing or "
                "unreadable)")
    return ("is not a PyTorch checkpoint: it is not the zip archive that torch.save writes (another kind of file, "
            "a checkpoint from before PyTorch 1.6, or overwritten)")


def zip_member_problem(mapped, member, next_start):
    """What is wrong with one member of a memory-mapped zip archive, or None. `next_start`: where the next member
    (or the directory) begins, which its data descriptor must reach exactly."""
    header_start = member.header_offset
    header = mapped[header_start:header_start + ZIP_LOCAL_HEADER.size]
    if len(header) < ZIP_LOCAL_HEADER.size:
        return f"is damaged (its zip directory puts member {member.filename!r} past the end of the file): {CORRUPTED}"
    signature, _, flags, method, _, _, *crc_and_sizes, name_size, extra_size = ZIP_LOCAL_HEADER.unpack(header)
    name_start = header_start + ZIP_LOCAL_HEADER.size
    start = name_start + name_size + extra_size
    name = member.orig_filename.encode("utf-8" if member.flag_bits & 0x800 else "cp437")
    central = (member.CRC, member.compress_size, member.file_size)
    header_agrees = (signature == b"PK\x03\x04" and (flags, method) == (member.flag_bits, member.compress_type)
                     and mapped[name_start:name_start + name_size] == name
                     # 0: given in the data descriptor instead; 0xFFFFFFFF: in a zip64 record
                     and all(local in (0, 0xFFFFFFFF, value) for local, value in zip(crc_and_sizes, central))
                     and zip_extra_is_intact(mapped[name_start + name_size:start]))
    if not header_agrees:
        return f"is damaged (member {member.filename!r}'s local header disagrees with the zip directory): {CORRUPTED}"
    if method != zipfile.ZIP_STORED:
        return f"is damaged (member {member.filename!r} is compressed, which torch.save never does): {CORRUPTED}"
    stop = start + member.compress_size
    if stop > len(mapped):
        return f"is damaged (its zip directory puts member {member.filename!r} past the end of the file): {CORRUPTED}"
    with memoryview(mapped) as view:
        crc = zlib.crc32(view[start:stop])
    if crc != member.CRC:
        return f"is damaged (member {member.filename!r} fails its CRC-32 check): {CORRUPTED}"
    # the data descriptor: [signature], CRC-32 and the two sizes (64-bit in zip64 archives), up to the next member
    descriptor = mapped[stop:next_start].removeprefix(b"PK\x07\x08") if 0 <= next_start - stop <= 24 else b""
    sizes = {8: "<2L", 16: "<2Q"}.get(len(descriptor) - 4)
    if flags & 0x08 and (not sizes or struct.unpack("<L", descriptor[:4]) + struct.unpack(sizes, descriptor[4:]) !=
                         central):
        return f"is damaged (the data descriptor after member {member.filename!r} disagrees with it): {CORRUPTED}"
    if not flags & 0x08 and stop != next_start:
        return f"is damaged (the zip directory's offsets disagree around member {member.filename!r}): {CORRUPTED}"
    return None


def zip_extra_is_intact(extra):
    """A local header's extra field: whole (id, size, data) records, torch.save's alignment padding all 'Z's."""
    while len(extra) >= 4:
        kind, size = struct.unpack("<2sH", extra[:4])
        if len(extra) < 4 + size or (kind == b"FB" and extra[4:4 + size] != b"Z" * size):
            return False
        extra = extra[4 + size:]
    return not extra


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint dict, with one clear error for a missing, truncated, damaged or unsafe file: first every
    member's CRC-32 (check_checkpoint_file), then torch.load with weights_only=True, which refuses anything but
    tensors and plain containers, so no pickled code runs."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    check_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=True)  # mmap: no 2nd copy in RAM
    except Exception as e:
        if "Weights only load failed" in str(e):
            found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch's wording varies: "Unsupported global: GLOBAL x"
            what = found[1] if found else "an object"
            raise ValueError(f"checkpoint {path} is unsafe to load: it pickles {what}, which is code, not tensors or "
                             f"plain containers; use a checkpoint that train_gpt2.py wrote") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load checkpoint {path}: its bytes are intact, but torch.load cannot read what they "
                         f"hold ({reason[:200]})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise ValueError(f"{path} is not a train_gpt2.py checkpoint (it needs 'model' and 'config' entries)")
    return checkpoint


# Hugging Face's GPT-2 uses Conv1D, which stores Linear weights transposed
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def download_hf_model(name):
    """config.json and model.safetensors of OpenAI's GPT-2 (a preset name) or of a hub repo OWNER/NAME (what
    export_hf.py --push-to-hub makes), optionally at a revision, OWNER/NAME@REVISION (a commit, branch or tag: a
    Space pins the commit it was made for), through the local Hugging Face cache; HF_ENDPOINT picks the hub."""
    match = re.fullmatch(r"(?P<repo>[\w.-]+/[\w.-]+|[\w.-]+)(@(?P<revision>[\w.-]+))?", name)
    if not match or (match["repo"] not in PRESETS and "/" not in match["repo"]):
        raise ValueError(f"'{name}' is neither a local directory, one of {', '.join(PRESETS)}, nor a Hugging Face "
                         f"repo OWNER/NAME (or OWNER/NAME@REVISION)")
    # offline (HF_HUB_OFFLINE, or no answer from the hub in 5 s) the local cache alone, at once: a cluster without
    # internet would otherwise wait through huggingface_hub's half minute of retries and their lines
    from fineweb import hub_endpoint, hub_is_reachable, offline_env
    cache_only = offline_env() or not hub_is_reachable()
    try:
        from huggingface_hub import hf_hub_download
        config = hf_hub_download(match["repo"], "config.json", revision=match["revision"], local_files_only=cache_only)
        weights = hf_hub_download(match["repo"], "model.safetensors", revision=match["revision"],
                                  local_files_only=cache_only)
    except Exception as e:
        why = "HF_HUB_OFFLINE is set" if offline_env() else f"the hub at {hub_endpoint()} cannot be reached"
        if cache_only:
            raise RuntimeError(f"'{name}' is not in the local Hugging Face cache and {why}: pass a local directory "
                               f"with config.json and model.safetensors (export_hf.py writes one)") from None
        raise RuntimeError(f"could not download '{name}' from the Hugging Face hub ({type(e).__name__}); "
                           f"offline, pass a local directory with config.json and model.safetensors") from None
    if os.path.dirname(config) != os.path.dirname(weights):  # the repo got a new commit between the two downloads
        raise RuntimeError(f"'{name}' changed on the hub while it was downloaded: pin a revision, OWNER/NAME@COMMIT")
    return os.path.dirname(config)


def read_hf_weights(directory):
    safetensors_path = os.path.join(directory, "model.safetensors")
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(safetensors_path):
        from safetensors.torch import load_file
        return load_file(safetensors_path)
    if os.path.exists(bin_path):
        return torch.load(bin_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def hf_to_our_state_dict(hf_state, our_state):
    """Map Hugging Face GPT2LMHeadModel / GPT2Model keys onto ours, transposing Conv1D weights."""
    converted = {}
    for key, value in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # HF's causal-mask buffers, not weights
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        key = key if key.startswith("transformer.") else "transformer." + key
        converted[key] = value.t() if key.endswith(HF_TRANSPOSED) else value
    converted["lm_head.weight"] = converted.get("transformer.wte.weight")
    missing = sorted(k for k in our_state if converted.get(k) is None)
    unexpected = sorted(k for k in converted if k not in our_state)
    if missing or unexpected:
        raise ValueError(f"Hugging Face weights do not fit GPT-2: missing {missing}, unexpected {unexpected}")
    wrong = [k for k in our_state if converted[k].shape != our_state[k].shape]
    if wrong:
        raise ValueError(f"Hugging Face weights have the wrong shape for {wrong}")
    return converted


def llama_config(hf_config):
    """GPTConfig for a Hugging Face LlamaForCausalLM config.json, when it is a model --arch llama can be:
    one key/value head per head, no RoPE scaling, no biases, SiLU, and our RMSNorm epsilon."""
    get = hf_config.get
    n_embd, n_head = hf_config["hidden_size"], hf_config["num_attention_heads"]
    rope = get("rope_parameters") or {"rope_theta": get("rope_theta", 10000.0), **(get("rope_scaling") or {})}
    unsupported = {"num_key_value_heads (grouped-query attention)": get("num_key_value_heads", n_head) != n_head,
                   "rope scaling": rope.get("rope_type", "default") != "default" or bool(get("rope_scaling")),
                   "attention_bias": bool(get("attention_bias")),
                   "mlp_bias": bool(get("mlp_bias")), "hidden_act": get("hidden_act", "silu") != "silu",
                   "head_dim": get("head_dim", n_embd // n_head) != n_embd // n_head,
                   "rms_norm_eps": get("rms_norm_eps", 1e-6) != RMSNorm(1).eps}
    if any(unsupported.values()):
        raise ValueError(f"this Llama directory has what --arch llama does not: "
                         f"{', '.join(k for k, v in unsupported.items() if v)}")
    return GPTConfig(block_size=hf_config["max_position_embeddings"], vocab_size=hf_config["vocab_size"],
                     n_layer=hf_config["num_hidden_layers"], n_head=n_head, n_embd=n_embd, **ARCHS["llama"],
                     rope_base=float(rope["rope_theta"]), mlp_hidden=hf_config["intermediate_size"],
                     tie_head=get("tie_word_embeddings", True))


# our names -> LlamaForCausalLM's, inside each block (c_attn is q_proj, k_proj, v_proj stacked; c_fc gate and up)
LLAMA_BLOCK_NAMES = {"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
                     "attn.c_proj.weight": "self_attn.o_proj.weight", "mlp.c_proj.weight": "mlp.down_proj.weight"}


def llama_to_our_state_dict(hf_state, our_state):
    """LlamaForCausalLM keys onto ours: q/k/v stacked into c_attn, gate/up into c_fc."""
    hf_state = {k.removeprefix("model."): v for k, v in hf_state.items()}
    converted = {"transformer.wte.weight": hf_state.pop("embed_tokens.weight"),
                 "transformer.ln_f.weight": hf_state.pop("norm.weight")}
    converted["lm_head.weight"] = hf_state.pop("lm_head.weight", converted["transformer.wte.weight"])
    for i in range(len([k for k in our_state if k.endswith(".attn.c_attn.weight")])):
        ours, theirs = f"transformer.h.{i}.", f"layers.{i}."
        for our_name, hf_name in LLAMA_BLOCK_NAMES.items():
            converted[ours + our_name] = hf_state.pop(theirs + hf_name)
        converted[ours + "attn.c_attn.weight"] = torch.cat([hf_state.pop(f"{theirs}self_attn.{n}_proj.weight")
                                                            for n in "qkv"])
        converted[ours + "mlp.c_fc.weight"] = torch.cat([hf_state.pop(f"{theirs}mlp.{n}_proj.weight")
                                                         for n in ("gate", "up")])
    leftover = [k for k in hf_state if not k.endswith("rotary_emb.inv_freq")]
    wrong = [k for k in our_state if k not in converted or converted[k].shape != our_state[k].shape]
    if leftover or wrong:
        raise ValueError(f"Llama weights do not fit --arch llama: unexpected {leftover[:5]}, missing or misshapen "
                         f"{wrong[:5]}")
    return converted


# -----------------------------------------------------------------------------
# -c or -m -> a model, in every script


def model_from_checkpoint(path, device="cpu", checkpoint=None):
    """A model from one of train_gpt2.py's checkpoints (log/model_XXXXX.pt), or build-nanogpt's or nanoGPT's.
    `checkpoint`: the file at `path`, if already read."""
    checkpoint = checkpoint or load_checkpoint(path)
    model = GPT(checkpoint_config(checkpoint))
    state = {k: v for k, v in clean_state_dict(checkpoint["model"]).items() if not k.endswith(".attn.bias")}
    if set(state) != set(model.state_dict()):
        differ = sorted(set(state) ^ set(model.state_dict()))
        raise ValueError(f"{path} does not hold the model its config describes: these weights differ: {differ[:5]}")
    model.load_state_dict(state)
    return model.to(device)


# GPT2LMHeadModel's activation_function -> our mlp: the tanh approximation (OpenAI's GPT-2), or the exact erf
HF_GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}


def gpt2_mlp(hf_config, directory):
    """The mlp of a GPT2LMHeadModel config, or a one-line ValueError for what this GPT does not compute."""
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in HF_GPT2_ACTIVATIONS:
        raise ValueError(f"{directory}: activation_function {activation!r} is not one this GPT computes "
                         f"({', '.join(HF_GPT2_ACTIVATIONS)})")
    unsupported = {key: hf_config[key] for key, ours in [("layer_norm_epsilon", 1e-5),
                                                          ("scale_attn_by_inverse_layer_idx", False),
                                                          ("reorder_and_upcast_attn", False)]
                   if key in hf_config and hf_config[key] != ours}
    if unsupported:
        raise ValueError(f"{directory}: {unsupported} differs from GPT-2's, which this GPT computes")
    return HF_GPT2_ACTIVATIONS[activation]


def model_from_pretrained(name_or_path):
    """Hugging Face weights: OpenAI GPT-2 (a hub name: gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a local
    directory), or a local LlamaForCausalLM directory of the shape --arch llama has (what export_hf.py
    writes); config.json and model.safetensors or pytorch_model.bin."""
    directory = name_or_path if os.path.isdir(name_or_path) else download_hf_model(name_or_path)
    with open(os.path.join(directory, "config.json")) as f:
        hf_config = json.load(f)
    if hf_config.get("model_type") == "llama":
        model = GPT(llama_config(hf_config))
        model.load_state_dict(llama_to_our_state_dict(read_hf_weights(directory), model.state_dict()))
        return model
    config = GPTConfig(block_size=hf_config["n_positions"], vocab_size=hf_config["vocab_size"],
                       n_layer=hf_config["n_layer"], n_head=hf_config["n_head"], n_embd=hf_config["n_embd"],
                       mlp=gpt2_mlp(hf_config, directory), mlp_hidden=hf_config.get("n_inner") or 0)
    model = GPT(config)
    model.load_state_dict(hf_to_our_state_dict(read_hf_weights(directory), model.state_dict()))
    return model


def load_model(checkpoint_path, model_name, device):
    """What -c PATH / -m NAME mean in every script: one of our checkpoints (or a run directory's newest, or a peer's
    checkpoint), or Hugging Face weights (a hub name or a local directory); in eval mode on `device`. Refuses a
    model whose vocabulary cannot hold GPT-2's tokens, which every script that calls this feeds it."""
    if checkpoint_path:
        model = model_from_checkpoint(resolve_checkpoint_path(checkpoint_path), device)
    else:
        model = model_from_pretrained(model_name).to(device)
    if model.config.vocab_size < GPT2_VOCAB_SIZE:
        raise ValueError(f"{checkpoint_path or model_name} has vocab_size {model.config.vocab_size}, smaller than "
                         f"the GPT-2 tokenizer's {GPT2_VOCAB_SIZE}: it was not trained on GPT-2 tokens")
    return model.eval()


# -----------------------------------------------------------------------------
# the training state: write it, resume from it


class ResumeError(Exception):
    """A resume that cannot go ahead, in one sentence that says what to do (train_gpt2.py prints it, exits 2)."""


def resolve_resume(resume, log_dir):
    """The checkpoint to resume from, or None for a fresh start."""
    existing = find_checkpoints(log_dir)
    if resume == "none":
        if existing:
            raise ResumeError(f"--resume none, but {log_dir} already holds checkpoints (up to {existing[-1][1]}) "
                             f"that a later --resume auto would mix up with this run: use another --log-dir")
        return None
    if resume == "auto":
        return existing[-1][1] if existing else None
    if os.path.isdir(resume):  # a run directory, as -c takes one: its newest checkpoint
        try:
            return resolve_checkpoint_path(resume, flag="--resume ")
        except FileNotFoundError as e:
            raise ResumeError(str(e)) from None
    return resume


def load_resume_checkpoint(path, config, optimizer_name, log_dir):
    """A training checkpoint for this model, whole (every CRC-32 checked) and read without executing any pickled
    code (weights_only=True). A bad file's error names the checkpoint --resume auto takes once it is moved away."""
    try:
        checkpoint = load_checkpoint(path)
    except FileNotFoundError as e:
        raise ResumeError(f"{e}: pass --resume auto, none, or the path of a checkpoint") from None
    except ValueError as e:
        problem = f"checkpoint {path} {e.problem}" if isinstance(e, CheckpointDamaged) else str(e)
        previous = fallback_checkpoint(path, log_dir)
        auto = f"--resume auto, which then finds no checkpoint in {log_dir} and starts from scratch"
        if previous:
            auto = f"--resume auto, which then takes {previous}"
        if os.path.abspath(os.path.dirname(path)) != os.path.abspath(log_dir):
            raise ResumeError(f"{problem}. Pass another --resume, e.g. {auto}") from None
        raise ResumeError(f"{problem}. Move it out of {log_dir} (keep it aside to inspect if you like) and run "
                         f"again with {auto}") from None
    missing = {"optimizer", "loader", "rng", "step", "bad_steps", "recent_losses", "evals_done"} - checkpoint.keys()
    if missing:
        raise ResumeError(f"{path} has weights but no training state ({', '.join(sorted(missing))}): it cannot be "
                         f"resumed; start a new --log-dir")
    saved = dataclasses.asdict(checkpoint_config(checkpoint))  # an older checkpoint's missing fields: GPT-2's
    if saved != dataclasses.asdict(config):
        diff = ", ".join(f"{k} {v} vs {getattr(config, k, None)}" for k, v in saved.items()
                         if getattr(config, k, None) != v)
        raise ResumeError(f"{path} holds a different model ({diff}): pass the flags it was trained with "
                         f"(--model/--arch/--n-layer/...) or use another --log-dir")
    saved_optimizer = checkpoint.get("args", {}).get("optimizer", "adamw")
    if saved_optimizer != optimizer_name:
        raise ResumeError(f"{path} was trained with --optimizer {saved_optimizer}, not {optimizer_name}: pass "
                         f"--optimizer {saved_optimizer} or use another --log-dir")
    return checkpoint


# flags that define what a run computes: a resume must not change them. (A flag some checkpoint predates is skipped.)
RUN_FLAGS = ("total_batch_size", "max_lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip", "skip_spikes",
             "dtype", "optimizer", "schedule", "decay_frac")
# flags a resume may change: the schedule's length, the periodic work, and how the same global batch is split
RESUMABLE_FLAGS = ("max_steps", "epochs", "eval_every", "val_tokens", "hellaswag_every", "sample_every",
                   "sample_tokens", "checkpoint_every", "keep_checkpoints", "batch_size", "shard_optimizer", "fsdp",
                   "activation_checkpointing")


def check_resume_args(path, checkpoint, run_flags, world_size, step):
    """Refuse a resume that would silently change the run; return notes on the changes a resume may make.
    run_flags: the flags as this run resolved them (--dtype auto's choice, the --epochs steps, the auto batch)."""
    flag = lambda name: "--" + name.replace("_", "-")
    old, new = checkpoint["args"], run_flags
    changed = lambda names: [n for n in names if n in old and n in new and old[n] != new[n] and old[n] != "auto"]
    refused = changed(RUN_FLAGS)
    if refused:
        raise ResumeError(f"{path} was trained with " + ", ".join(f"{flag(n)} {old[n]} (now {new[n]})" for n in refused)
                         + ": resuming would change the run. Resume with its values, or start a new run in another "
                         "--log-dir (or pass --resume none there)")
    notes = [f"resuming with {flag(n)} {old[n]} -> {new[n]}" for n in changed(RESUMABLE_FLAGS)]
    if changed(["max_steps"]):
        notes.append(f"the LR schedule is recomputed for {new['max_steps']} steps, continuing from step {step}")
    if len(checkpoint["rng"]) != world_size:
        notes.append(f"resuming on {len(checkpoint['rng'])} -> {world_size} ranks (the same global batch of "
                     f"{new['total_batch_size']} tokens, so the same data)")
    return notes


def save_checkpoint(path, checkpoint, sleep_before_rename=0.0):
    """Through a temporary file, flushed to disk and renamed over the final name: whenever the process dies, the
    final name holds either nothing or a complete checkpoint."""
    def write(f):
        torch.save(checkpoint, f)
        time.sleep(sleep_before_rename)  # test hook: widens the window in which a kill leaves only the .tmp
    write_atomically(path, write)


def rng_state(device_type):
    """This process's RNG states as plain values, which load with weights_only=True."""
    np_state = np.random.get_state()
    return dict(python=random.getstate(), numpy=[np_state[0], np_state[1].tolist(), *np_state[2:]],
                torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if device_type == "cuda" else None)


def set_rng_state(state, device_type):
    random.setstate(state["python"])
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    if device_type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"])
