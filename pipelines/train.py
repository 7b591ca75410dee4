"""Trains a recurrent classifier on the temporal-order task: ``python -m pipelines.train --help``."""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import tqdm

from pipelines import reporting
from pipelines.checkpoints import Checkpointer
from pipelines.config import TrainConfig, from_args, load
from pipelines.sharding import Sharding, barrier, initialize_processes, is_primary, local_value
from pipelines.steps import TrainState
from qrsu_data import loaders, store


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class Diverged(TrainingError):
    """The loss became NaN or infinite."""


RUN_FILES = ("config.json", "history.json", "curves.png", "checkpoints")


def prepare_workdir(config: TrainConfig) -> Path:
    """Checks ``config.workdir`` against what it already holds; returns it. Never deletes a run unasked."""
    workdir = Path(config.workdir).expanduser().absolute()
    saved = workdir / "config.json"
    holds_run = saved.exists() or (workdir / "checkpoints").exists()
    if config.overwrite:
        for name in RUN_FILES:
            p = workdir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    elif config.resume:
        if not holds_run:
            raise TrainingError(f"nothing to resume: {workdir} holds no run")
        if saved.exists():
            diffs = config.model_differences(load(saved))
            if diffs:
                listed = ", ".join(f"{k}: saved {a!r}, asked {b!r}" for k, (a, b) in diffs.items())
                raise TrainingError(f"{workdir} holds a run of another model or data ({listed}); "
                                    f"resume with the saved settings or choose another --workdir")
    elif holds_run:
        raise TrainingError(f"{workdir} already holds a run; pass --resume to continue it, --overwrite to "
                            f"start afresh, or choose another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


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
    if losses and not np.all(np.isfinite([local_value(x) for x in losses])):
        last = checkpointer.latest_step()
        kept = (f"the last good checkpoint (step {last}) is kept in {checkpointer.directory}" if last is not None
                else "no checkpoint had been saved yet")
        raise Diverged(f"the training loss became NaN or infinite by step {step}; stopped without saving. "
                       f"{kept}. Try a lower --lr or --clip-norm 1.")


def evaluate(ts: TrainState, config: TrainConfig, split: str = "test") -> dict[str, float]:
    """Loss and accuracy over every example of ``split``, each counted once."""
    ts.reset("eval")
    # Each process reads its shard; put_batch assembles the global batch from all of them.
    local_batch_size = config.eval_batch_size // jax.process_count()
    for batch in loaders.eval_loader(config.difficulty, split, batch_size=local_batch_size,
                                     data_dir=config.data_dir, padding=config.padding):
        ts.eval_step(ts.sharding.put_batch(batch))
    return ts.compute("eval")


def run(config: TrainConfig) -> dict:
    """Trains per ``config``, writing history, plot, config and checkpoints into its workdir; returns a summary."""
    config.validate()
    initialize_processes(config.coordinator_address, config.num_processes, config.process_id, config.distributed)
    primary = is_primary()
    # Process 0 checks and prepares the workdir; the others wait, so none sees a half-prepared one.
    workdir = prepare_workdir(config) if primary else Path(config.workdir).expanduser().absolute()
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
        raise TrainingError(f"batch size {config.batch_size} is larger than the train split ({train_size})")
    train_iter = loaders.train_loader(config.difficulty, batch_size=config.batch_size // jax.process_count(),
                                      seed=config.seed, data_dir=config.data_dir, padding=config.padding)
    ts = TrainState.create(config, sharding)
    checkpointer = Checkpointer(workdir)

    step, elapsed, history = 0, 0.0, reporting.new_history()
    if config.resume and checkpointer.latest_step() is not None:
        pure, meta = checkpointer.restore(checkpointer.latest_step(), ts.pure_state(), train_iter)
        ts.load_pure_state(pure)
        step, elapsed, history = meta["step"], meta["elapsed_s"], meta["history"]
        if primary:
            print(f"Resumed {workdir} at step {step} (epoch {step // steps_per_epoch + 1}).", flush=True)
    if primary:
        reporting.write_json(workdir / "config.json", {**config.to_json(), "resume": False, "overwrite": False})

    def save() -> None:
        checkpointer.save(step, ts.pure_state(), train_iter,
                          {"step": step, "elapsed_s": elapsed + time.perf_counter() - t_start, "history": history})

    total_steps = config.epochs * steps_per_epoch
    t_start = time.perf_counter()
    pending: list = []
    if primary:
        print(f"Training {config.model} on {config.difficulty!r}: {config.epochs} epochs of {steps_per_epoch} "
              f"steps, batch {config.batch_size} over {sharding.num_devices} device(s) in {jax.process_count()} "
              f"process(es), workdir {workdir}", flush=True)
    with _interrupt_flag() as interrupted:
        while step < total_steps:
            epoch = step // steps_per_epoch
            end = (epoch + 1) * steps_per_epoch
            bar = tqdm.tqdm(total=steps_per_epoch, initial=step - epoch * steps_per_epoch,
                            desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False,
                            dynamic_ncols=True, mininterval=0.5, disable=not primary)
            while step < end:
                pending.append(ts.train_step(sharding.put_batch(next(train_iter))))
                step += 1
                bar.update(1)
                at_check = step % config.log_every == 0 or step % config.checkpoint_every == 0
                stop = _stop_requested(interrupted, at_check)
                if at_check or stop:
                    _check_finite(pending, step, checkpointer)
                    pending.clear()
                    bar.set_postfix(loss=f"{ts.compute('train')['loss']:.4f}", refresh=False)
                if step % config.checkpoint_every == 0:
                    save()
                if stop:
                    bar.close()
                    save()
                    if primary:
                        print(f"\nInterrupted at step {step}; checkpoint saved in {checkpointer.directory}. "
                              f"Continue with: python -m pipelines.train --workdir {workdir} --resume", flush=True)
                    checkpointer.close()
                    return {"interrupted": True, "step": step, "workdir": str(workdir)}
            bar.close()
            _check_finite(pending, step, checkpointer)
            pending.clear()
            train = ts.compute("train")
            test = evaluate(ts, config)
            ts.reset("train")
            now = elapsed + time.perf_counter() - t_start
            for key, value in (("train_loss", train["loss"]), ("train_acc", train["accuracy"]),
                               ("test_loss", test["loss"]), ("test_acc", test["accuracy"]),
                               ("epoch", epoch + 1), ("sequences_seen", step * config.batch_size),
                               ("wall_time_s", round(now, 2))):
                history[key].append(value)
            if primary:
                reporting.write_json(workdir / "history.json", history)
                reporting.plot_curves(history, workdir / "curves.png",
                                      title=f"{config.model} on {config.difficulty}")
            save()
            if primary:
                tqdm.tqdm.write(f"epoch {epoch + 1}/{config.epochs}: train loss {train['loss']:.4f} "
                                f"acc {train['accuracy']:.4f} | test loss {test['loss']:.4f} "
                                f"acc {test['accuracy']:.4f} | {now:.0f} s")
    checkpointer.close()
    summary = {"interrupted": False, "step": step, "workdir": str(workdir),
               "sequences_seen": step * config.batch_size,
               "final_test_acc": history["test_acc"][-1] if history["test_acc"] else math.nan,
               "best_test_acc": max(history["test_acc"], default=math.nan),
               "wall_time_s": elapsed + time.perf_counter() - t_start}
    if primary:
        print(f"Done: {config.model} on {config.difficulty!r}, {summary['sequences_seen']:,} training "
              f"sequences, final test accuracy {summary['final_test_acc']:.4f} "
              f"(best {summary['best_test_acc']:.4f}), {summary['wall_time_s']:.0f} s. Wrote history.json, "
              f"curves.png, config.json and checkpoints/ to {workdir}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    config = from_args(argv)
    try:
        summary = run(config)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 130 if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
