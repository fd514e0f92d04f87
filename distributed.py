"""
torch.distributed setup and teardown shared by the scripts that run under torchrun (train_gpt2.py, hellaswag.py,
and any other): forming the process group under torchrun's elastic agent, and a clean exit on gloo.
"""

import os

import torch
import torch.distributed as dist


def init_process_group(backend, rank, world_size):
    """torchrun's restarts reuse its key-value store, where the previous attempt's keys would send the new ranks
    to dead peers (pytorch#135712): give each attempt a namespace of its own."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return dist.init_process_group(backend)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False)
    store = dist.PrefixStore(f"attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)


def destroy_process_group(settle=True):
    """Tear down torch.distributed; every rank calls it. gloo's worker threads need the GIL to free a finished
    collective's tensors: destroying the group first deadlocks torch < 2.8 (pytorch#154976), and later versions
    may abort at exit. With settle, one more all_reduce lets them free those first. Its own tensor and work are
    returned: the caller keeps them (to the end of the process, where the group may outlive this call), so no
    worker thread is ever the one to free them."""
    last_sync = last_work = None
    if settle and dist.get_backend() == "gloo":
        last_sync = torch.zeros(1)
        last_work = dist.all_reduce(last_sync, async_op=True)
        last_work.wait()
    dist.destroy_process_group()
    return last_sync, last_work
