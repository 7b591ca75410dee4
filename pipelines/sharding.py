"""The device mesh and shardings, declared once: batches split along ``data``, everything else replicated."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_processes(coordinator_address: str = "", num_processes: int = 1, process_id: int = 0,
                         auto: bool = False) -> None:
    """Joins a multi-process JAX run (jax.distributed) when asked; a no-op for a single process."""
    if num_processes > 1 or coordinator_address:
        jax.distributed.initialize(coordinator_address=coordinator_address or None, num_processes=num_processes,
                                   process_id=process_id)
    elif auto:
        jax.distributed.initialize()  # cluster auto-detection: SLURM, Open MPI, TPU pods, ...


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
