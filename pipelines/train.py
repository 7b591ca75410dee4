"""Trains a sequence classifier on the temporal-order task: ``python -m pipelines.train --help``.

The loop of Flax's examples: make the model, the optimizer and the data, then per epoch the train steps, the
evaluation of the test split, the history row and a checkpoint. Around it, what keeps a run safe: one writer
per workdir, a run replaced only once its successor has started, checkpoints that an interrupt or a resume
continue exactly, and errors that say what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import tqdm
from flax import nnx

from pipelines import cli, reporting, runs
from pipelines import config as config_lib
from pipelines.checkpoints import Checkpointer
from pipelines.config import TrainConfig
from pipelines.evaluator import Evaluator
from pipelines.sharding import Sharding, barrier, initialize_processes, is_primary
from pipelines.steps import create_model, create_tx, init_state, make_train_step, reset_metrics
from qrsu_data import loaders, store
from qrsu_models import registry


class TrainingError(cli.CommandError):
    """A run that cannot start or go on; the message says why and what to do."""


class Diverged(TrainingError):
    """The loss became NaN or infinite."""


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[dict]:
    """Turns the first Ctrl-C into a flag checked between steps (a second one stops at once)."""
    flag = {"set": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_requested(flag: dict, at_check: bool) -> bool:
    """Whether a Ctrl-C asks to stop; with several processes, agreed by all at check steps only."""
    if jax.process_count() == 1:
        return flag["set"]
    if not at_check:
        return False
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array(flag["set"]))))


def _check_finite(losses: list, step: int, checkpointer: Checkpointer) -> None:
    if losses and not np.all(np.isfinite([float(np.asarray(x.addressable_data(0))) for x in losses])):
        steps = checkpointer.steps()
        kept = (f"the last good checkpoint (step {steps[-1]}) is kept in {checkpointer.directory}" if steps
                else "no checkpoint had been saved, so nothing was written")
        raise Diverged(f"the training loss became NaN or infinite by step {step}; stopped without saving: {kept}. "
                       f"Try a lower --lr or --clip-norm 1.")


def available_memory() -> int:
    """Bytes free for a run's arrays on the first local device (host memory on a CPU)."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(config: TrainConfig) -> int:
    """The model's parameter count; TrainingError if it cannot fit with its gradients and Adam's moments."""
    shapes = nnx.eval_shape(lambda: create_model(config))  # no array is made
    count = registry.parameter_count(shapes)
    need, free = 16 * count, available_memory()  # float32 parameters, gradients and two moments
    if need > free:
        raise TrainingError(f"model {config.model!r} at --hidden {config.hidden} has {count:,} parameters, which "
                            f"need at least {need / 2 ** 30:,.1f} GiB (parameters, gradients and Adam's two "
                            f"moments), but {free / 2 ** 30:,.1f} GiB are available; choose a smaller --hidden")
    return count


def _workdir_state(config: TrainConfig, workdir: Path) -> tuple[TrainConfig, dict]:
    """(config to run, settings a resume changed); TrainingError for a workdir that does not fit the request."""
    holds = runs.holds_run(workdir)
    if config.resume:
        if not holds:
            raise TrainingError(f"nothing to resume: {workdir} holds no run")
        saved = runs.load_config(workdir)
        try:
            return config_lib.amend(saved, dataclasses.asdict(config))
        except ValueError as e:
            raise TrainingError(str(e)) from None
    if holds and not config.overwrite:
        raise TrainingError(f"{workdir} already holds a run; pass --resume to continue it, --overwrite to "
                            f"replace it, or choose another --workdir")
    return config, {}


def run(config: TrainConfig) -> dict:
    """Trains per ``config``, writing history, plot, config and checkpoints into its workdir; returns a summary."""
    config.validate()
    initialize_processes(config.coordinator_address, config.num_processes, config.process_id, config.distributed,
                         config.init_timeout)
    workdir = runs.resolve(config.workdir)
    # Process 0 owns the workdir; the others wait, so none sees a half-prepared one.
    with runs.WorkdirLock(workdir) if is_primary() else contextlib.nullcontext():
        return _run(config, workdir)


def _run(config: TrainConfig, workdir: Path) -> dict:
    primary = is_primary()
    config, changes = _workdir_state(config, workdir)
    # The model's options and size are checked before anything is built: a bad option costs no dataset build.
    parameters = check_memory(config)
    barrier("workdir")
    if not store.is_built(config.difficulty, config.data_dir):
        print(f"Dataset {config.difficulty!r} is not built yet; building it into "
              f"{store.resolve_data_dir(config.data_dir)} ...", flush=True)
        store.build(config.difficulty, config.data_dir)  # locked: concurrent processes build it once

    sharding = Sharding.create()
    sharding.check_batch_size(config.batch_size)
    sharding.check_batch_size(config.eval_batch_size)
    train_size = loaders.split_size(config.difficulty, "train", config.data_dir)
    steps_per_epoch = config.steps_per_epoch or train_size // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {train_size} examples of the train split")
    train_iter = loaders.train_loader(config.difficulty, batch_size=config.batch_size // jax.process_count(),
                                      seed=config.seed, data_dir=config.data_dir, padding=config.padding)
    model = create_model(config)
    state_size = registry.state_size(model, loaders.max_length(config.difficulty))
    tx = create_tx(config)
    split, state = init_state(model, tx, config, sharding)
    evaluator = Evaluator(split, sharding, config.eval_batch_size)
    checkpointer = Checkpointer(workdir)
    with make_train_step(config, split, tx, sharding) as step_fn:
        if config.overwrite and primary and runs.run_files(workdir):
            runs.remove_run(workdir)  # only now: the new run is known to start
            print(f"Removed the previous run in {workdir}.", flush=True)
        barrier("overwrite")
        eval_split = "validation" if "validation" in loaders.split_names(config.difficulty) else "test"
        step, elapsed, history = 0, 0.0, reporting.new_history(eval_split)
        record = {**config.to_json(), "resume": False, "overwrite": False, "parameters": parameters,
                  "state_size": state_size, "resumes": []}
        if config.resume:
            step, state, meta, skipped = checkpointer.restore_newest(state, train_iter)
            elapsed, history = meta["elapsed_s"], meta["history"]
            done = len(history["epoch"])
            if done > config.epochs or (done == config.epochs and step >= config.epochs * steps_per_epoch):
                raise TrainingError(f"the run in {workdir} has trained {done} of its epochs already; pass --epochs "
                                    f"with more than {done} to train it further")
            record["resumes"] = [*runs.saved_record(workdir).get("resumes", []), {"at_step": step, "changed": changes}]
            if primary:
                for s, why in skipped:
                    print(f"warning: checkpoint step {s} is unreadable ({why}); resuming from step {step}",
                          file=sys.stderr, flush=True)
                reporting.write_json(workdir / "config.json", record)
                print(f"Resumed {workdir} at step {step} (epoch {step // steps_per_epoch + 1}).", flush=True)
        size = f"{parameters:,} parameters" + (f", state {state_size:,} floats" if state_size is not None else "")
        if primary:
            print(f"Training {config.model} ({size}) on {config.difficulty!r}: {config.epochs} epochs of "
                  f"{steps_per_epoch} steps, batch {config.batch_size} over {sharding.num_devices} device(s) in "
                  f"{jax.process_count()} process(es), workdir {workdir}", flush=True)
        t_start = time.perf_counter()

        config_written = config.resume

        def save() -> None:
            nonlocal config_written
            if primary and not config_written:
                # A fresh run's config is written with its first checkpoint, so a run that stops before it
                # (diverged, or killed) leaves nothing that would make a plain rerun refuse the workdir.
                reporting.write_json(workdir / "config.json", record)
                config_written = True
            checkpointer.save(step, state, train_iter,
                              {"step": step, "elapsed_s": elapsed + time.perf_counter() - t_start, "history": history})

        pending: list = []
        epoch = len(history["epoch"])
        events = reporting.Events(workdir / "events", purge_step=step if config.resume else None, enabled=primary)
        try:
            with _interrupt_flag() as interrupted:
                while epoch < config.epochs:
                    end = (epoch + 1) * steps_per_epoch
                    bar = tqdm.tqdm(total=steps_per_epoch, initial=step - epoch * steps_per_epoch,
                                    desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False,
                                    dynamic_ncols=True, mininterval=0.5, disable=not primary)
                    while step < end:
                        state, loss = step_fn(state, sharding.put_batch(next(train_iter)))
                        pending.append(loss)
                        step += 1
                        bar.update(1)
                        at_check = step % config.log_every == 0 or step % config.checkpoint_every == 0
                        stop = _stop_requested(interrupted, at_check)
                        if at_check or stop:
                            _check_finite(pending, step, checkpointer)
                            pending.clear()
                            running = state.metrics.compute()
                            bar.set_postfix(loss=f"{running['loss']:.4f}", refresh=False)
                            events.scalars(step, {"train/running_loss": running["loss"]})
                        if stop:
                            bar.close()
                            save()
                            if primary:
                                print(f"\nInterrupted at step {step}; checkpoint saved in {checkpointer.directory}. "
                                      f"Continue with: python -m pipelines.train --workdir {workdir} --resume",
                                      flush=True)
                            return {"interrupted": True, "step": step, "workdir": str(workdir)}
                        # The epoch's last step is saved below, with the epoch's history row.
                        if step % config.checkpoint_every == 0 and step < end:
                            save()
                    bar.close()
                    _check_finite(pending, step, checkpointer)
                    pending.clear()
                    train = state.metrics.compute()
                    val = evaluator.evaluate(state.params, config.difficulty, eval_split, data_dir=config.data_dir)
                    state = reset_metrics(state, sharding)
                    now = elapsed + time.perf_counter() - t_start
                    for key, value in (("train_loss", train["loss"]), ("train_acc", train["accuracy"]),
                                       ("val_loss", val["loss"]), ("val_acc", val["accuracy"]),
                                       ("epoch", epoch + 1), ("sequences_seen", step * config.batch_size),
                                       ("wall_time_s", round(now, 2))):
                        history[key].append(value)
                    events.scalars(step, {"train/loss": train["loss"], "train/accuracy": train["accuracy"],
                                          f"{eval_split}/loss": val["loss"], f"{eval_split}/accuracy": val["accuracy"]})
                    if epoch + 1 == config.epochs:  # the test split once, on the final model
                        test = (val if eval_split == "test" else
                                evaluator.evaluate(state.params, config.difficulty, "test", data_dir=config.data_dir))
                        history["test"] = {"step": step, "loss": test["loss"], "accuracy": test["accuracy"]}
                        events.scalars(step, {"test/loss": test["loss"], "test/accuracy": test["accuracy"]})
                    if primary:
                        reporting.write_json(workdir / "history.json", history)
                        reporting.plot_curves(history, workdir / "curves.png",
                                              title=f"{config.model} on {config.difficulty}")
                    save()
                    epoch += 1
                    if primary:
                        tqdm.tqdm.write(f"epoch {epoch}/{config.epochs}: train loss {train['loss']:.4f} "
                                        f"acc {train['accuracy']:.4f} | {eval_split} loss {val['loss']:.4f} "
                                        f"acc {val['accuracy']:.4f} | {now:.0f} s")
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            raise TrainingError(f"out of memory at step {step}: {str(e).splitlines()[0][:300]}. Choose a smaller "
                                f"--batch-size, --eval-batch-size or --hidden") from None
        finally:
            events.close()
            checkpointer.close()
    test = history["test"] or {}
    summary = {"interrupted": False, "step": step, "workdir": str(workdir),
               "sequences_seen": step * config.batch_size, "parameters": parameters, "state_size": state_size,
               "final_test_acc": test.get("accuracy", math.nan),
               "best_val_acc": max(history["val_acc"], default=math.nan),
               "wall_time_s": elapsed + time.perf_counter() - t_start}
    if primary:
        print(f"Done: {config.model} on {config.difficulty!r}, {summary['sequences_seen']:,} training "
              f"sequences, test accuracy {summary['final_test_acc']:.4f} (best {history['eval_split']} accuracy "
              f"{summary['best_val_acc']:.4f}), {summary['wall_time_s']:.0f} s. Wrote history.json, "
              f"curves.png, config.json, events/ (TensorBoard) and checkpoints/ to {workdir}", flush=True)
    return summary


def configure(argv: list[str] | None = None) -> TrainConfig:
    """The run the command line asks for: a fresh run's config, or the saved run's with a resume's changes."""
    flags = config_lib.parse_flags(argv)  # argparse exits with code 2 on a malformed flag
    if "workdir" in flags and not flags["workdir"].strip():
        raise ValueError(f"workdir must name a folder, got {flags['workdir']!r}")  # "" is not "the default"
    if not flags.get("resume"):
        return TrainConfig(**flags).validate()
    fresh = TrainConfig(**{k: v for k, v in flags.items() if k in ("model", "difficulty", "seed", "workdir")})
    saved = runs.load_config(fresh.workdir)  # RunError when there is nothing to resume
    config, _ = config_lib.amend(saved, flags)  # ValueError listing the settings a resume may not change
    return config.validate()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""

    def go() -> int:
        summary = run(configure(argv))
        return cli.EXIT_INTERRUPTED if summary["interrupted"] else 0

    return cli.guarded(go)


if __name__ == "__main__":
    sys.exit(main())
