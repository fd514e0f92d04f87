import os
import sys

# One thread per process, as a fixed fact of every run the suite starts. On CPU the thread count changes the
# floats: a matmul split over 2 threads sums in another order than over 1 (AdamW weights seen 3.7e-9 apart), so
# two runs compared bit for bit (resume = uninterrupted, DDP = accumulation, killed = undisturbed) must use the
# same count, and MKL, whose MKL_DYNAMIC defaults to true, may use fewer threads than asked on a busy machine.
# Hard-set, not setdefault: CI may export OMP_NUM_THREADS or MKL_NUM_THREADS (torch takes MKL_NUM_THREADS over
# OMP_NUM_THREADS), and one thread is also the fastest for these tiny models on 2 shared cores. Set before any
# test module imports torch; every subprocess a test starts builds its environment from os.environ and inherits it.
os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_DYNAMIC="FALSE", MKL_DYNAMIC="FALSE")
if "torch" in sys.modules:  # imported already (by a plugin): its thread pool may have read the environment
    sys.modules["torch"].set_num_threads(1)
