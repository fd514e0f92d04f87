"""
The tokenizer's efficiency on a corpus: characters and bytes per token, tokens per document, and how many tokens
words take by how often they occur. Prints a table and writes stats.json. Run from the repository root:

    python fineweb.py --demo && python -m dev.tokenizer_stats --data-dir demo_shards   # -> demo_shards/stats.json
    python -m dev.tokenizer_stats --local-files 'corpus/*.jsonl' --out-dir stats        # any corpus, no shards
    python -m dev.tokenizer_stats --demo --compare-vocab 8000,16000,32000,50257 --out-dir stats

--data-dir measures the documents in fineweb.py's shards: it reads them again from the corpus that the shards'
fineweb_progress.json names, so a document cut short by --max-tokens counts whole. Without --data-dir the corpus
flags are fineweb.py's own. Either way it measures the first --max-docs documents (100,000; 0: all of them).
What stats.json holds, and results: docs/studies.md.
"""
import argparse
import glob
import itertools
import json
import os
import re
import sys
from collections import Counter
from concurrent.futures.process import BrokenProcessPool

import numpy as np

import fineweb
from fineweb import batched_by_size, encode_document, get_tokenizer, ordered_pool_map, save_json_atomically

# -----------------------------------------------------------------------------
# the statistics (stats.json)

# A word is a maximal run of letters, with the space before it if there is one. That is the chunk GPT-2's
# pre-tokenizer makes of it (` ?\p{L}+` in its pattern), and BPE never merges across chunks, so the tokens a word
# takes alone are the tokens it takes in running text. (One exception: letters after an apostrophe, as in
# "don't", where GPT-2's chunk is "'t".) Words are counted as written: "The" and "the" are two words.
WORD = re.compile(r" ?[^\W\d_]+")
FREQUENCY_BUCKETS = [(1, 1), (2, 9), (10, 99), (100, 999), (1000, 9999), (10000, None)]  # occurrences in the corpus
PERCENTILES = [0, 10, 25, 50, 75, 90, 99, 100]

def document_stats(texts):
    """Each document's characters, UTF-8 bytes and tokens (without the <|endoftext|> before it), and a Counter
    of the word chunks of the batch. Runs in the tokenizer processes."""
    enc = get_tokenizer()
    sizes = [(len(text), len(text.encode("utf-8", "surrogatepass")), len(encode_document(enc, text))) for text in texts]
    words = Counter(word for text in texts for word in WORD.findall(text))
    return sizes, words

def fragmentation(words, count_tokens):
    """The share of word occurrences that take 1, 2, 3, 4+ tokens, per bucket of corpus frequency.
    words: Counter of word chunks; count_tokens(chunk) -> its number of tokens."""
    frequency = Counter()
    for chunk, n in words.items():
        frequency[chunk.lstrip(" ")] += n
    rows = [{"bucket": f"{low}+" if high is None else f"{low}" if low == high else f"{low}-{high}",
             "types": 0, "occurrences": 0, "by_tokens": [0, 0, 0, 0], "tokens": 0} for low, high in FREQUENCY_BUCKETS]
    total = {"bucket": "all", "types": len(frequency), "occurrences": 0, "by_tokens": [0, 0, 0, 0], "tokens": 0}
    bucket_of = lambda count: next(i for i, (low, high) in enumerate(FREQUENCY_BUCKETS)  # noqa: E731
                                   if count >= low and (high is None or count <= high))
    for word, count in frequency.items():
        rows[bucket_of(count)]["types"] += 1
    for chunk, n in words.items():
        tokens = count_tokens(chunk)
        for row in (rows[bucket_of(frequency[chunk.lstrip(" ")])], total):
            row["occurrences"] += n
            row["by_tokens"][min(tokens, 4) - 1] += n
            row["tokens"] += n * tokens
    for row in rows + [total]:
        n = row["occurrences"]
        row["share"] = {k: (count / n if n else None) for k, count in zip(("1", "2", "3", "4+"), row["by_tokens"])}
        row["tokens_per_word"] = row["tokens"] / n if n else None
    return {"by_frequency": [row for row in rows if row["occurrences"]], "all": total}

def corpus_stats(docs, max_docs=None, num_proc=1, compare_vocab=()):
    """stats.json's content for the first max_docs documents (all if None) of an iterable of texts.
    compare_vocab: vocabulary sizes for vocab_comparison (it keeps the texts in memory)."""
    docs = itertools.islice(docs, max_docs) if max_docs else docs
    kept = []  # the texts, for vocab_comparison

    def keeping(docs):
        for text in docs:
            kept.append(text)
            yield text

    docs = keeping(docs) if compare_vocab else docs
    sizes, words = [], Counter()
    get_tokenizer()  # in the parent, so that forked workers inherit it
    for batch_sizes, batch_words in ordered_pool_map(document_stats, batched_by_size(docs, 1 << 20), num_proc):
        sizes += batch_sizes
        words.update(batch_words)
    if not sizes:
        raise ValueError("the corpus is empty: there are no documents to measure")
    chars, nbytes, tokens = (np.array(column, dtype=np.int64) for column in zip(*sizes))
    enc = get_tokenizer()
    stats = {
        "tokenizer": "gpt2", "documents": len(sizes),
        "tokens": int(tokens.sum()), "characters": int(chars.sum()), "bytes": int(nbytes.sum()),
        "chars_per_token": float(chars.sum() / max(tokens.sum(), 1)),
        "bytes_per_token": float(nbytes.sum() / max(tokens.sum(), 1)),
        "tokens_per_document": {"mean": float(tokens.mean()),
                                **{f"p{q}": float(np.percentile(tokens, q)) for q in PERCENTILES}},
        "words": {"definition": "a maximal run of letters, with the space before it if any (regex ' ?[^\\W\\d_]+'); "
                                "buckets by how often the word (without the space) occurs in these documents",
                  **fragmentation(words, lambda chunk: len(enc.encode_ordinary(chunk)))},
    }
    if compare_vocab:
        stats["vocab_comparison"] = vocab_comparison(kept, words, compare_vocab)
    return stats

def vocab_comparison(texts, words, sizes):
    """For each vocabulary size: a byte-level BPE trained on these texts by Hugging Face `tokenizers` (GPT-2's
    pre-tokenizer and byte alphabet), measured on the same texts, so it fits them better than GPT-2's
    vocabulary, learned on WebText, can."""
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        raise ValueError("--compare-vocab needs Hugging Face's tokenizers library: pip install tokenizers") from None
    chars = sum(len(text) for text in texts)
    chunks = list(words)
    rows = []
    for size in sizes:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tokenizer.train_from_iterator(texts, trainer)
        tokens = sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts))
        chunk_tokens = dict(zip(chunks, (len(encoding.ids) for encoding in tokenizer.encode_batch(chunks))))
        rows.append({"vocab_size": size, "trained_vocab_size": tokenizer.get_vocab_size(), "tokens": tokens,
                     "chars_per_token": chars / max(tokens, 1),
                     "words": fragmentation(words, chunk_tokens.__getitem__)})
    return rows

def print_stats(stats):
    print(f"{stats['scope']}: {stats['documents']:,} documents, "
          f"{stats['tokens']:,} tokens, {stats['characters']:,} characters, {stats['bytes']:,} bytes; "
          f"{stats['chars_per_token']:.2f} characters and {stats['bytes_per_token']:.2f} bytes per token")
    per_doc = stats["tokens_per_document"]
    print("tokens per document: " + ", ".join(f"{key} {value:,.0f}" for key, value in per_doc.items()))
    print(f"{'word frequency':>14s} {'types':>9s} {'words':>11s}  {'1 tok':>6s} {'2 tok':>6s} {'3 tok':>6s} "
          f"{'4+ tok':>6s} {'tok/word':>8s}")
    for row in stats["words"]["by_frequency"] + [stats["words"]["all"]]:
        shares = " ".join(f"{100 * row['share'][k]:5.1f}%" for k in ("1", "2", "3", "4+"))
        print(f"{row['bucket']:>14s} {row['types']:9,d} {row['occurrences']:11,d}  {shares} "
              f"{row['tokens_per_word']:8.2f}")
    if stats.get("vocab_comparison"):
        print("byte-level BPE trained on these documents (tokenizers), measured on them; GPT-2 for comparison:")
        print(f"{'vocab':>7s} {'chars/tok':>9s} {'tok/word':>8s} {'tok/word, words seen once':>26s}")
        gpt2 = {"vocab_size": "gpt2", "chars_per_token": stats["chars_per_token"], "words": stats["words"]}
        for row in stats["vocab_comparison"] + [gpt2]:
            once = next((b["tokens_per_word"] for b in row["words"]["by_frequency"] if b["bucket"] == "1"), None)
            print(f"{row['vocab_size']:>7} {row['chars_per_token']:9.2f} {row['words']['all']['tokens_per_word']:8.2f} "
                  f"{'-' if once is None else f'{once:.2f}':>26s}")

def write_stats(docs, out_dir, max_docs, num_proc, of_what, available=None, compare_vocab=()):
    """Measure the first max_docs documents (None: all), print the statistics and write out_dir/stats.json.
    of_what: "in the shards" or "of the corpus"; available: how many documents there are, if known."""
    limit = max_docs if available is None else min(max_docs or available, available)
    stats = {"scope": None, **corpus_stats(docs, limit, num_proc, compare_vocab)}
    partial = max_docs is not None and stats["documents"] == max_docs and max_docs != available
    stats["scope"] = f"the first {stats['documents']:,} documents {of_what}" if partial else f"every document {of_what}"
    print_stats(stats)
    os.makedirs(out_dir, exist_ok=True)
    save_json_atomically(os.path.join(out_dir, "stats.json"), stats)
    print(f"wrote {os.path.join(out_dir, 'stats.json')}")
    return stats

# -----------------------------------------------------------------------------
# which documents: a corpus named by fineweb.py's flags, or the documents in shards fineweb.py wrote

def vocab_sizes(text):
    """A comma-separated list of vocabulary sizes, each at least 257 (the 256 bytes and one merge)."""
    try:
        sizes = [int(float(size)) for size in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not sizes or min(sizes) < 257:
        raise argparse.ArgumentTypeError(f"vocabulary sizes must be at least 257, got {text!r}")
    return sizes

def shard_documents(data_dir, num_proc):
    """(documents, how many the shards hold): the corpus that fineweb.py tokenized into data_dir, read again as
    its fineweb_progress.json names it, and refused if it is no longer the same corpus."""
    path = os.path.join(data_dir, fineweb.PROGRESS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{data_dir} has no {fineweb.PROGRESS_FILE}, so it holds no shards that fineweb.py "
                                f"tokenized (downloaded shards come without their text); name the corpus with "
                                f"--demo, --local-files or --dataset instead of --data-dir")
    with open(path) as f:
        progress = json.load(f)
    source = progress["config"]["source"]
    corpus = argparse.Namespace(demo=False, local_files=None, num_proc=num_proc)
    if source[0] == "demo":
        corpus.demo = True
    elif source[0] == "local":
        corpus.text_field = source[1]
        corpus.local_files = [glob.escape(name) for name, size, mtime in source[2]]  # each file by its own name
    elif source[0] == "hf":
        corpus.dataset, corpus.name, corpus.text_field, corpus.streaming = source[1:]
    else:
        raise ValueError(f"{data_dir} was tokenized from {source!r}, a corpus this tool cannot read again")
    docs, now = fineweb.corpus_documents(corpus)
    if json.loads(json.dumps(now)) != source:  # the names, sizes and mtimes of the files, or the Python version
        raise ValueError(f"the corpus is not the one fineweb.py tokenized into {data_dir} (a file was edited or "
                         f"replaced, or --demo ran on another Python's stdlib), so the documents in its shards "
                         f"cannot be read again; measure the corpus as it is now with its own flags")
    doc_index, offset = progress["starts"][-1]  # where the shards end
    return docs, doc_index + (offset > 0)

def main(args):
    if args.data_dir:
        docs, available = shard_documents(args.data_dir, args.num_proc)
        write_stats(docs, args.out_dir or args.data_dir, args.max_docs or None, args.num_proc, "in the shards",
                    available=available, compare_vocab=args.compare_vocab)
        return
    write_stats(fineweb.corpus_documents(args)[0], args.out_dir or ".", args.max_docs or None, args.num_proc,
                "of the corpus", compare_vocab=args.compare_vocab)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m dev.tokenizer_stats",
                                     description="Tokenizer statistics of a corpus: print them and write stats.json.")
    add = parser.add_argument
    add("--dataset", default="HuggingFaceFW/fineweb-edu", help="Hugging Face dataset, e.g. HuggingFaceFW/fineweb")
    add("--name", default="sample-10BT", help="its config: sample-10BT, sample-100BT, sample-350BT, ...")
    add("--streaming", action="store_true", help="read the dataset as it downloads, without caching it all first")
    corpus = parser.add_mutually_exclusive_group()
    corpus.add_argument("--data-dir", metavar="DIR", help="the documents in the shards fineweb.py wrote to DIR, read "
                        "again from the corpus they came from; stats.json goes beside them")
    corpus.add_argument("--local-files", nargs="+", metavar="PATH_OR_GLOB",
                        help=".jsonl/.json/.parquet/.txt files (a .txt file is one document) instead of a download")
    corpus.add_argument("--demo", action="store_true", help="no network: the Python stdlib's .py files")
    add("--text-field", default="text", help="the field of each record that holds the document")
    add("--out-dir", help="where stats.json goes (default: --data-dir, else the current directory)")
    add("--max-docs", type=int, default=100_000, help="measure the first N documents; 0: all of them")
    add("--compare-vocab", type=vocab_sizes, default=(), metavar="8000,16000,...", help="in stats.json also: "
        "byte-level BPEs of these sizes trained on the measured documents with Hugging Face tokenizers")
    add("--num-proc", type=fineweb.count, default=os.cpu_count(), help="tokenizer processes (default: all cores)")
    args = parser.parse_args()
    if args.max_docs < 0:
        parser.error("--max-docs must be 0 (all documents) or more")
    corpus_flags = ["dataset", "name", "text_field", "streaming"]
    if args.data_dir and any(getattr(args, flag) != parser.get_default(flag) for flag in corpus_flags):
        parser.error("--data-dir reads the corpus its shards came from; --dataset, --name, --text-field and "
                     "--streaming would name another")
    try:
        main(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenProcessPool:
        print("error: a tokenizer process died (out of memory? try a smaller --num-proc)", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(2)
