"""The device mesh and shardings, declared once: batches split along ``data``, everything else replicated."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


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
        """Raises ValueError unless the global batch splits evenly over devices and processes."""
        if global_batch_size % self.num_devices:
            raise ValueError(f"batch size {global_batch_size} is not divisible by the {self.num_devices} devices "
                             f"of the mesh; choose a multiple of {self.num_devices}")

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global arrays sharded along the batch axis, from this process's part of the batch."""
        return {k: jax.make_array_from_process_local_data(self.batch, v) for k, v in local_batch.items()}

    def replicate(self, tree):
        """``tree`` copied onto every device."""
        return jax.device_put(tree, self.replicated)
