"""
Generate text from one of our checkpoints or from OpenAI's GPT-2.

    python sample.py -c log/ --prompt "Hello, I'm a language model," --num-samples 5
    python sample.py -c log/ --num-samples 1 --max-new-tokens 500   # streams as it goes
    python sample.py -m gpt2 --temperature 0.8 --top-k 50 --top-p 0.95 --seed 42
    python sample.py -m hf_dir/                    # a Hugging Face-format directory, e.g. export_hf.py's output

The text goes to stdout (the prompt, then the continuation; samples separated by a header line), everything else
to stderr. One sample is printed token by token as it is generated; the streamed text is exactly what
--no-stream prints for the same --seed. An empty prompt starts from <|endoftext|>, i.e. a fresh document.
"""

import argparse
import codecs
import os
import sys

# torch, and the modules that import it, are imported in main() once the arguments are parsed: --help and a bad
# flag answer at once, not after the seconds torch takes to import on a busy machine

EOT = 50256  # <|endoftext|>, which precedes every document in training

# -----------------------------------------------------------------------------
# tokens in, tokens out, text out


def encode_prompt(enc, prompt):
    """Prompt -> token ids. '<|endoftext|>' in the prompt is the special token; an empty prompt is just that."""
    return enc.encode(prompt, allowed_special={"<|endoftext|>"}) if prompt else [EOT]


def stream_text(enc, tokens):
    """Token ids -> pieces of text, as soon as they are complete characters. A GPT-2 token can end in the middle
    of a UTF-8 character (emoji, CJK), so bytes are decoded incrementally: a partial character waits for the
    next token instead of printing as '\ufffd'. The pieces join to exactly enc.decode(tokens)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # tiktoken's decode also uses 'replace'
    for token in tokens:
        piece = decoder.decode(enc.decode_single_token_bytes(int(token)))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--checkpoint", help="one of train_gpt2.py's checkpoints, or a run directory (its newest): "
                        "e.g. log/")
    source.add_argument("-m", "--model", help="OpenAI GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a "
                                              "hub repo OWNER/NAME (export_hf.py --push-to-hub) or a local "
                                              "Hugging Face-format directory")
    parser.add_argument("--prompt", default="Hello, I'm a language model,", help="text to continue")
    parser.add_argument("--num-samples", type=int, default=5, help="independent samples, generated as one batch")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate per sample")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 is greedy")
    parser.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens; 0: all")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set of tokens "
                                                                  "with this much probability; None: off")
    parser.add_argument("--seed", type=int, default=None, help="random seed; None: a fresh one, printed to stderr")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="autocast dtype; "
                        "auto: bf16 on GPUs with native bf16 (compute capability >= 8.0), fp16 on older ones, fp32 "
                        "on CPU and MPS")
    parser.add_argument("--no-stream", action="store_true", help="with one sample, print it only when complete")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise ValueError("--num-samples and --max-new-tokens must be at least 1")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 is greedy), got {args.temperature}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0 turns it off), got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch
    from checkpoint import load_model, resolve_checkpoint_path
    from fineweb import get_tokenizer  # the repo's one GPT-2 tokenizer, offline-capable
    from hardware import autocast, pick_device, pick_dtype
    device = pick_device(args.device)
    enc = get_tokenizer()
    prompt_tokens = encode_prompt(enc, args.prompt)
    checkpoint = None
    if args.checkpoint:
        checkpoint = resolve_checkpoint_path(args.checkpoint)  # a file, or a run directory's newest
    model = load_model(checkpoint, args.model, device)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    generator = torch.Generator(device=device).manual_seed(seed)
    print(f"{checkpoint or args.model}: {model.num_params() / 1e6:.2f}M parameters on {device}, seed {seed}",
          file=sys.stderr)

    idx = torch.tensor([prompt_tokens], dtype=torch.long, device=device)
    sampling = dict(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, generator=generator)
    shown_prompt = args.prompt  # an empty prompt's <|endoftext|> is not shown
    with autocast(pick_dtype(args.dtype, device), device):
        if args.num_samples == 1 and not args.no_stream:
            sys.stdout.write(shown_prompt)
            new_tokens = (token.item() for token in model.generate_tokens(idx, args.max_new_tokens, **sampling))
            for piece in stream_text(enc, new_tokens):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return
        out = model.generate(idx.repeat(args.num_samples, 1), args.max_new_tokens, **sampling)
    for i, row in enumerate(out[:, len(prompt_tokens):].tolist()):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}/{args.num_samples} ---")
        print(shown_prompt + "".join(stream_text(enc, row)))


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
