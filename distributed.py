"""
torch.distributed setup and teardown shared by the scripts that run under torchrun (train_gpt2.py, hellaswag.py,
and any other): forming the process group under torchrun's elastic agent, and a clean exit on gloo.
"""

import datetime
import os
import socket
import sys
import time
import uuid

import torch
import torch.distributed as dist

STORE_KEY = "distributed.attempt_store"  # in the agent's store: "host port nonce" of this attempt's fresh store


def init_process_group(backend, rank, world_size, timeout=datetime.timedelta(minutes=10)):
    """Form the default process group from torchrun's environment.

    Where torchrun shares its agent's key-value store with the workers (TORCHELASTIC_USE_AGENT_STORE, the
    default for c10d rendezvous since torch 2.5), that store outlives a restart, and the previous attempt's keys
    would send the new ranks to dead peers. Namespacing the keys by TORCHELASTIC_RESTART_COUNT (what torch 2.4
    does) is not enough: each agent counts restarts for itself, an agent that restarts for a membership change
    does not count it, and a replacement node starts at 0, so ranks can wait in different namespaces for ever
    (pytorch#135712). So rank 0 hosts a fresh store for each attempt, as torchrun itself does with
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, and publishes its address and a random nonce in the agent's store. A
    rank that reads an address left by the previous attempt finds its store gone (that rank 0 was stopped before
    this attempt started) or holding another nonce, and reads again until the key changes."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return dist.init_process_group(backend)
    if rank == 0 and int(os.environ.get("GROUP_WORLD_SIZE", 1)) > 1:
        print("warning: torchrun shares its agent's store with the workers; its agents deadlock when a node is "
              "replaced (README): run torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", file=sys.stderr)
    agent_store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                is_master=False, timeout=timeout)
    if rank == 0:
        store = dist.TCPStore(socket.getfqdn(), 0, world_size, is_master=True, timeout=timeout,
                              wait_for_workers=False)
        nonce = uuid.uuid4().hex
        store.set("nonce", nonce)
        agent_store.set(STORE_KEY, f"{socket.getfqdn()} {store.port} {nonce}")
    else:
        store = attempt_store(agent_store, world_size, timeout)
    dist.init_process_group(backend, store=dist.PrefixStore("attempt/", store), rank=rank, world_size=world_size)


def attempt_store(agent_store, world_size, timeout, connect_timeout=datetime.timedelta(seconds=5)):
    """A client of the store that rank 0 of this attempt hosts (see init_process_group)."""
    deadline = time.monotonic() + timeout.total_seconds()
    agent_store.wait([STORE_KEY])
    while True:
        host, port, nonce = agent_store.get(STORE_KEY).decode().split()
        try:  # a plain connection first: a dead rank 0's port refuses at once, without TCPStore's retries and logs
            socket.create_connection((host, int(port)), timeout=connect_timeout.total_seconds()).close()
            store = dist.TCPStore(host, int(port), world_size, is_master=False, timeout=connect_timeout)
            if store.get("nonce").decode() == nonce:
                store.set_timeout(timeout)
                return store
        except (OSError, RuntimeError):  # refused, silent, or another store: the previous attempt's rank 0
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0's store at {host}:{port} did not answer within {timeout}")
        time.sleep(0.2)


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
