"""
Any EleutherAI lm-evaluation-harness task on one of our checkpoints (any architecture) or on OpenAI's GPT-2, in
this process, with no export step.

    python eval_harness.py -c log/ --tasks hellaswag,arc_easy,arc_challenge,piqa,winogrande,lambada_openai --batch-size 32
    python eval_harness.py -m gpt2 --tasks lambada_openai --limit 500 --out results.json
    python eval_harness.py -c log/ --tasks my_task --include-path my_tasks/   # a local task yaml

The model is wrapped in lm-eval's own LM interface (TemplateLM) and handed to lm-eval's simple_evaluate, so the
task definitions, prompts, few-shot sampling and metrics are the harness's. Only the three model calls live here:
- loglikelihood: requests tokenized as the harness does (context and continuation encoded whole, then split),
  sorted by length, right-padded and scored in batches of --batch-size rows by hellaswag.py's scorer (float32
  log-softmax over the real 50,257 tokens, float64 sums);
- loglikelihood_rolling (perplexity tasks): the harness's own rolling windows of block_size tokens;
- generate_until: model.py's KV-cache generation (greedy unless the task samples), one request at a time,
  stopped at the task's stop sequences or <|endoftext|>.
lm-eval is optional: pip install -r requirements-eval.txt.
"""

import argparse
import os
import sys
import time

import torch
from tqdm import tqdm

import fineweb
import hellaswag
from checkpoint import load_model
from hardware import DTYPES, autocast, pick_device, pick_dtype
from model import GPT2_VOCAB_SIZE

try:
    from lm_eval.api.model import TemplateLM
except ImportError:  # main() says how to install it
    TemplateLM = object

EOT = 50256  # <|endoftext|>: the harness's prefix token for GPT-2, and a stop sequence of every generation
INSTALL = "pip install -r requirements-eval.txt"

# -----------------------------------------------------------------------------
# our GPT as an lm-eval language model


class GPTLM(TemplateLM):
    """lm-eval's TemplateLM around a model.GPT: TemplateLM tokenizes the loglikelihood requests exactly as its
    Hugging Face model does; we score them. Single process (rank 0 of 1)."""

    def __init__(self, model, device="cpu", dtype="fp32", batch_size=8):
        super().__init__()
        if model.config.vocab_size < GPT2_VOCAB_SIZE:
            raise ValueError(f"the model's vocab_size {model.config.vocab_size} cannot hold the GPT-2 tokenizer's "
                             f"{GPT2_VOCAB_SIZE} tokens")
        self.model, self.enc = model.eval(), fineweb.get_tokenizer()
        self._device, self.dtype, self.batch_size = device, dtype, batch_size

    @property
    def eot_token_id(self):
        return EOT

    @property
    def max_length(self):
        return self.model.config.block_size

    @property
    def tokenizer_name(self):
        return "gpt2"

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        return self.enc.encode(string, allowed_special="all")  # "<|endoftext|>" in a prompt is the token, as in HF

    def tok_decode(self, tokens):
        return self.enc.decode(tokens)

    def score(self, pairs, desc, disable_tqdm=False):
        """[(context tokens, continuation tokens)] -> [(summed log-prob of the continuation, is_greedy)], in the
        order given. Rows longer than block_size + 1 lose tokens on the left, as in the harness."""
        rows = [hellaswag.fit_row(context, continuation, self.max_length) for context, continuation in pairs]
        results = [None] * len(rows)
        with tqdm(total=len(rows), desc=desc, disable=disable_tqdm) as bar:
            for batch in hellaswag.length_sorted_batches(rows, self.batch_size):
                sums, greedy = hellaswag.score_rows(self.model, [rows[i] for i in batch], self._device,
                                                    DTYPES[self.dtype], greedy=True)
                for i, logprob, is_greedy in zip(batch, sums, greedy):
                    results[i] = (logprob, is_greedy)
                bar.update(len(batch))
        return results

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        results = self.score([(context, continuation) for _, context, continuation in requests], "loglikelihood",
                             disable_tqdm)
        for (request, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request, result)
        return results

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """Each string's whole log-likelihood, in the harness's disjoint windows of up to block_size predicted
        tokens (each window conditions on as much of the text before it as fits); all windows of all strings
        are batched together."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        windows, owners = [], []
        for index, (string,) in enumerate(request.args for request in requests):
            for window in get_rolling_token_windows(self.tok_encode(string), EOT, self.max_length, context_len=1):
                windows.append(make_disjoint_window(window))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self.score(windows, "loglikelihood_rolling", disable_tqdm)):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm=False):
        """Continue each context with model.py's KV-cache generation until a stop sequence (the task's, plus
        <|endoftext|>) or max_gen_toks tokens; the text is cut before the first stop sequence, as the harness
        does. As in the harness, the context keeps its last block_size - max_gen_toks tokens."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
        outputs = []
        for context, gen_kwargs in tqdm([request.args for request in requests], desc="generate_until",
                                        disable=disable_tqdm):
            kwargs = normalize_gen_kwargs(gen_kwargs, 256)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok_decode([EOT]))
            max_gen_toks = kwargs["max_gen_toks"]
            tokens = self.tok_encode(context) or [EOT]
            tokens = tokens[-max(1, self.max_length - max_gen_toks):]
            text = self.generate(tokens, max_gen_toks, until, kwargs.get("temperature", 0.0), kwargs.get("top_k"),
                                 kwargs.get("top_p"))
            text = postprocess_generated_text(generation=text, stop=until, think_end_token=None)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs

    def generate(self, tokens, max_new_tokens, until, temperature=0.0, top_k=None, top_p=None):
        """The text of up to max_new_tokens new tokens, stopping as soon as it contains a stop sequence."""
        idx = torch.tensor([tokens], dtype=torch.long, device=self._device)
        new_tokens = []
        with autocast(self.dtype, self._device):
            for token in self.model.generate_tokens(idx, max_new_tokens, temperature or 0.0, top_k, top_p):
                new_tokens.append(token.item())
                if new_tokens[-1] == EOT or any(stop in self.tok_decode(new_tokens) for stop in until if stop):
                    break
        return self.tok_decode(new_tokens)


# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="lm-evaluation-harness tasks on a train_gpt2.py checkpoint or "
                                     "OpenAI's GPT-2, in process.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--checkpoint", help="a checkpoint file, or a run directory (its newest checkpoint)")
    source.add_argument("-m", "--model", help="Hugging Face GPT-2: a hub name (gpt2, ...) or a local directory")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task or group names, e.g. "
                        "hellaswag,arc_easy,lambada_openai (lm-eval --tasks list shows them all)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (None: each task's own)")
    parser.add_argument("--limit", type=float, default=None, help="only the first N documents of each task "
                        "(a number below 1 is a fraction)")
    parser.add_argument("--batch-size", type=int, default=None, help="scoring rows per forward pass (None: 32 on "
                        "CUDA, 8 elsewhere)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="autocast dtype (auto: bf16 "
                        "on GPUs that have it natively, fp32 on CPU and MPS)")
    parser.add_argument("--include-path", default=None, help="a directory of extra task yamls (e.g. a task whose "
                        "dataset_path points at local files)")
    parser.add_argument("--out", default=None, help="also write lm-eval's results as JSON here")
    parser.add_argument("--log-samples", action="store_true", help="with --out: each document's prompt, the "
                        "model's outputs and its metrics, under 'samples'")
    parser.add_argument("--seed", type=int, default=0, help="lm-eval's random seed (few-shot sampling)")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit:g}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.include_path is not None and not os.path.isdir(args.include_path):
        raise FileNotFoundError(f"--include-path {args.include_path} is not a directory")
    return args


def main(argv=None):
    args = parse_args(argv)
    if TemplateLM is object:
        raise RuntimeError(f"eval_harness.py needs lm-evaluation-harness, which is not installed: {INSTALL}")
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    batch_size = args.batch_size or (32 if device.startswith("cuda") else 8)
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    task_manager = None
    if args.include_path:  # indexing lm-eval's ~15k built-in tasks takes seconds: skip it when all are local
        task_manager = TaskManager(include_path=args.include_path, include_defaults=False)
        task_manager = task_manager if all(task_manager.match_tasks([task]) for task in tasks) else None
    task_manager = task_manager or TaskManager(include_path=args.include_path)
    unknown = [task for task in tasks if not task_manager.match_tasks([task]) and not os.path.isfile(task)]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {', '.join(unknown)}: `lm-eval ls tasks` lists them; a local "
                         f"yaml needs --include-path")
    model = load_model(args.checkpoint, args.model, device)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    lm = GPTLM(model, device, dtype, batch_size)
    start = time.time()
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=args.num_fewshot, limit=limit,
                                      task_manager=task_manager, log_samples=args.log_samples, random_seed=args.seed,
                                      numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                      fewshot_random_seed=args.seed)
    seconds = time.time() - start
    print(f"{args.checkpoint or args.model} ({model.num_params() / 1e6:.2f}M parameters) on {device}, {dtype}, "
          f"batch size {batch_size}, {seconds:.1f} s")
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.out:
        results["eval_harness"] = dict(model=args.checkpoint or args.model, device=device, dtype=dtype,
                                       batch_size=batch_size, seconds=round(seconds, 3))
        from lm_eval.utils import handle_non_serializable
        fineweb.save_json_atomically(args.out, results, default=handle_non_serializable)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(2)
