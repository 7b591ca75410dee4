"""Session-wide test settings."""

import jax

# The tests compare computations that are equal in exact arithmetic (fast path vs reference, threads vs one
# thread) to float32 tolerances. On a GPU, XLA's default float32 matmul may use TF32 (10-bit mantissa), which
# is ~1e-3 off; ask for full float32 everywhere (a no-op on CPU, where CI runs).
jax.config.update("jax_default_matmul_precision", "highest")


import os  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def easy_data_dir(tmp_path_factory) -> str:
    """A data dir holding the standard `easy` config, built once for the whole session (read-only: copy to damage)."""
    from qrsu_data import store

    path = tmp_path_factory.mktemp("easy_data")
    store.build("easy", path)
    return os.fspath(path)


def read_events(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under ``logdir``: tag -> [(step, value)], in file order."""
    tf = pytest.importorskip("tensorflow")
    from pathlib import Path

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(os.fspath(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray of 2 CPUs for the tests that run studies in this process, started once (the commands use a
    Ray that is already running and leave it running)."""
    import logging

    ray = pytest.importorskip("ray")
    from pipelines.engine.pool import WORKER_ENV

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": WORKER_ENV})
    yield ray
    ray.shutdown()
