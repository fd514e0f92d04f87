import os

# Tiny test models run fastest on one thread, and far faster than on two when the CI cores are shared with
# the subprocesses the tests start (which inherit this). Set before any test module imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
