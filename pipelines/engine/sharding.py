"""The device mesh and shardings, declared once: batches split along ``data``, everything else replicated."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_processes(coordinator_address: str = "", num_processes: int = 1, process_id: int = 0,
                         auto: bool = False, timeout_s: int = 300) -> None:
    """Joins a multi-process JAX run (jax.distributed) when asked, or exits with a message after ``timeout_s``."""
    if not (num_processes > 1 or coordinator_address or auto):
        return
    if jax.distributed.is_initialized():
        return
    where = f"the coordinator at {coordinator_address}" if coordinator_address else "the cluster's coordinator"
    print(f"process {process_id} of {num_processes}: waiting up to {timeout_s} s for every process to reach {where}",
          file=sys.stderr, flush=True)

    def give_up() -> None:
        # JAX's own timeout aborts the process from C++ with a stack dump; this says what to do instead.
        print(f"error: not every process reached {where} within {timeout_s} s. Start all {num_processes} "
              f"processes with the same --coordinator-address and --num-processes and one --process-id each "
              f"(0..{num_processes - 1}), check that process 0's host and port are reachable, or raise "
              f"--init-timeout", file=sys.stderr, flush=True)
        os._exit(1)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        if auto and not coordinator_address:
            jax.distributed.initialize(initialization_timeout=timeout_s + 60)  # SLURM, Open MPI, TPU pods, ...
        else:
            jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                       process_id=process_id, initialization_timeout=timeout_s + 60)
    finally:
        watchdog.cancel()


def is_primary() -> bool:
    """Whether this process writes the run's files and prints its progress (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@dataclasses.dataclass(frozen=True)
class Sharding:
    """A 1-D data-parallel mesh over every visible device of every process."""

    mesh: Mesh

    @classmethod
    def create(cls, devices: list[jax.Device] | None = None) -> Sharding:
        """A mesh over ``devices`` (default: all devices of all processes)."""
        devices = jax.devices() if devices is None else devices
        return cls(Mesh(np.asarray(devices), (DATA_AXIS,)))

    @property
    def num_devices(self) -> int:
        """How many devices hold a slice of each batch."""
        return self.mesh.size

    @property
    def batch(self) -> NamedSharding:
        """Leading (batch) axis split across the data axis."""
        return NamedSharding(self.mesh, P(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        """A full copy on every device."""
        return NamedSharding(self.mesh, P())

    @property
    def blocks_each_step(self) -> bool:
        """Whether each step must finish before the next is dispatched: several CPU devices in one process.

        XLA:CPU runs every device's part of a step as a task on one host thread pool, and a collective (the
        gradients' all-reduce) waits in a rendezvous until every device's task reaches it. With steps queued
        ahead, tasks of consecutive steps interleave on the pool and a rendezvous can wait forever for a
        device whose thread is busy with the other step: with 2 forced host devices, 200 unsynchronised steps
        aborted after 40 s ("Expected 2 threads to join the rendezvous, but only 1 of them arrived") in 1 of
        2 runs, and 0 of 4 runs aborted when each step was awaited (tests/test_sharding.py).
        """
        local = [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]
        return len(local) > 1 and local[0].platform == "cpu"

    def check_batch_size(self, global_batch_size: int) -> None:
        """Raises ValueError unless the global batch splits evenly over the mesh's devices."""
        if global_batch_size % self.num_devices:
            raise ValueError(f"batch size {global_batch_size} is not divisible by the {self.num_devices} devices "
                             f"of the mesh; choose a multiple of {self.num_devices}")

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global arrays sharded along the batch axis, from this process's part of the batch."""
        return {k: jax.make_array_from_process_local_data(self.batch, v) for k, v in local_batch.items()}

    def replicate(self, tree):
        """``tree`` copied onto every device (of every process)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)

        def put(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return x  # already a global array
            host = np.asarray(x)  # the same value in every process (same seed, same steps)
            return jax.make_array_from_callback(host.shape, self.replicated, lambda idx: host[idx])

        return jax.tree.map(put, tree)


def local_value(x) -> np.ndarray:
    """The host value of a replicated array, also when other processes hold copies of it."""
    return np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
