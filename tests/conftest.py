"""Session-wide test settings."""

import os
import tempfile

# Many tests compile the same programs (a model's step at the same shapes), in this process, in the commands'
# subprocesses and in Ray workers, which all inherit the environment: JAX's persistent compilation cache
# lets them compile each once per machine (measured: tests/test_train.py and test_experiment.py 1.2x faster).
# Keyed by the program, the backend and the JAX version, so a stale entry is never used; at most 512 MB.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "qrsu-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(512 * 2**20))

import jax  # noqa: E402

# And in this process, should a plugin have imported JAX before the environment was set.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

# The tests compare computations that are equal in exact arithmetic (fast path vs reference, threads vs one
# thread) to float32 tolerances. On a GPU, XLA's default float32 matmul may use TF32 (10-bit mantissa), which
# is ~1e-3 off; ask for full float32 everywhere (a no-op on CPU, where CI runs).
jax.config.update("jax_default_matmul_precision", "highest")


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


def study_records(out) -> dict[str, dict]:
    """Every run's record in the study folder ``out``, by key, without what differs between identical runs
    (wall time, attempts)."""
    import json
    from pathlib import Path

    found = {}
    for path in sorted((Path(out) / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        record["result"].pop("wall_time_s")
        record.pop("attempts")
        found[path.stem] = record
    return found


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
