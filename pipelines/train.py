"""Trains a sequence classifier on the temporal-order task: ``python -m pipelines.train --help``.

The loop of Flax's examples: make the model, the optimizer and the data (a
:class:`pipelines.engine.session.Session`), then per epoch the train steps
(:func:`pipelines.engine.loop.train_steps`), the evaluation of the validation split, the history row and a
checkpoint. Around it, what keeps a run safe: one writer per workdir, a run replaced only once its successor
has started, checkpoints that an interrupt or a resume continue exactly, and errors that say what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path

import jax
import tqdm
from flax import nnx

from pipelines.engine import config as config_lib
from pipelines.engine import reporting
from pipelines.engine import workdir as workdir_lib
from pipelines.engine.checkpoints import Checkpointer
from pipelines.engine.config import TrainConfig
from pipelines.engine.errors import EXIT_INTERRUPTED, CommandError, guarded
from pipelines.engine.loop import INTERRUPTED, Diverged as _LoopDiverged, Every, Interrupt, train_steps
from pipelines.engine.model import create_model, skipped_updates
from pipelines.engine.session import Session, ensure_built
from pipelines.engine.sharding import barrier, initialize_processes, is_primary
from pipelines.engine.state import reset_metrics
from qrsu_models import registry


class TrainingError(CommandError):
    """A run that cannot start or go on; the message says why and what to do."""


class Diverged(TrainingError):
    """The loss became NaN or infinite."""


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
    holds = workdir_lib.holds_run(workdir)
    if config.resume:
        if not holds:
            raise TrainingError(f"nothing to resume: {workdir} holds no run")
        saved = workdir_lib.load_config(workdir)
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
    workdir = workdir_lib.resolve(config.workdir)
    # Process 0 owns the workdir; the others wait, so none sees a half-prepared one.
    with workdir_lib.WorkdirLock(workdir) if is_primary() else contextlib.nullcontext():
        config, changes = _workdir_state(config, workdir)
        # The model's options and size are checked before anything is built: a bad option costs no dataset build.
        check_memory(config)
        barrier("workdir")
        ensure_built(config.dataset, config.data_dir)  # locked: concurrent processes build it once
        train_size = config.dataset.size("train")
        steps_per_epoch = config.steps_per_epoch or train_size // config.batch_size
        if steps_per_epoch < 1:
            raise ValueError(f"batch_size {config.batch_size} is larger than the {train_size} examples of the train "
                             f"split")
        with Session.open(config) as session:
            if config.overwrite and is_primary() and workdir_lib.run_files(workdir):
                workdir_lib.remove_run(workdir)  # only now: the new run is known to start
                print(f"Removed the previous run in {workdir}.", flush=True)
            barrier("overwrite")
            return _Training(session, workdir, steps_per_epoch, changes).run()


class _Training:
    """A session trained epoch by epoch into a workdir: history, events, checkpoints, the final test."""

    def __init__(self, session: Session, workdir: Path, steps_per_epoch: int, changes: dict):
        config = session.config
        self.session, self.config, self.workdir, self.steps_per_epoch = session, config, workdir, steps_per_epoch
        self.primary = is_primary()
        self.checkpointer = Checkpointer(workdir)
        self.history = reporting.new_history(session.check_split)
        self.elapsed = 0.0
        self.record = {**config.to_json(), "resume": False, "overwrite": False, "parameters": session.parameters,
                       "state_size": session.state_size, "resumes": []}
        # A fresh run's config is written with its first checkpoint, so a run that stops before it (diverged,
        # or killed) leaves nothing that would make a plain rerun refuse the workdir.
        self.config_written = config.resume
        if config.resume:
            self._restore(changes)
        self.events = reporting.Events(workdir / "events", purge_step=session.step if config.resume else None,
                                       enabled=self.primary)
        self.t_start = time.perf_counter()

    def _restore(self, changes: dict) -> None:
        s, config = self.session, self.config
        s.step, s.state, meta, skipped = self.checkpointer.restore_newest(s.state, s.train_iter)
        s.fresh_carry()  # not checkpointed
        self.elapsed, self.history = meta["elapsed_s"], meta["history"]
        done = len(self.history["epoch"])
        if done > config.epochs or (done == config.epochs and s.step >= config.epochs * self.steps_per_epoch):
            raise TrainingError(f"the run in {self.workdir} has trained {done} of its epochs already; pass --epochs "
                                f"with more than {done} to train it further")
        self.record["resumes"] = [*workdir_lib.saved_record(self.workdir).get("resumes", []),
                                  {"at_step": s.step, "changed": changes}]
        if self.primary:
            for step, why in skipped:
                print(f"warning: checkpoint step {step} is unreadable ({why}); resuming from step {s.step}",
                      file=sys.stderr, flush=True)
            reporting.write_json(self.workdir / "config.json", self.record)
            print(f"Resumed {self.workdir} at step {s.step} (epoch {s.step // self.steps_per_epoch + 1}).", flush=True)

    def _now(self) -> float:
        return self.elapsed + time.perf_counter() - self.t_start

    def save(self) -> None:
        """A checkpoint of the current step (and, the first time, the run's config.json)."""
        if self.primary and not self.config_written:
            reporting.write_json(self.workdir / "config.json", self.record)
            self.config_written = True
        s = self.session
        self.checkpointer.save(s.step, s.state, s.train_iter,
                               {"step": s.step, "elapsed_s": self._now(), "history": self.history})

    def run(self) -> dict:
        """Trains the remaining epochs; a summary of the run (``interrupted`` if Ctrl-C stopped it)."""
        s, config = self.session, self.config
        size = f"{s.parameters:,} parameters" + (f", state {s.state_size:,} floats" if s.state_size is not None else "")
        if self.primary:
            print(f"Training {config.model} ({size}) on {config.difficulty!r}: {config.epochs} epochs of "
                  f"{self.steps_per_epoch} steps, batch {config.batch_size} over {s.sharding.num_devices} device(s) "
                  f"in {jax.process_count()} process(es), workdir {self.workdir}", flush=True)
        try:
            with Interrupt().installed() as interrupt:
                while len(self.history["epoch"]) < config.epochs:
                    if self._epoch(interrupt) == INTERRUPTED:
                        return {"interrupted": True, "step": s.step, "workdir": str(self.workdir)}
        except _LoopDiverged as e:
            steps = self.checkpointer.steps()
            kept = (f"the last good checkpoint (step {steps[-1]}) is kept in {self.checkpointer.directory}" if steps
                    else "no checkpoint had been saved, so nothing was written")
            raise Diverged(f"{e}; stopped without saving: {kept}. Try a lower --lr or --clip-norm 1.") from None
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            raise TrainingError(f"out of memory at step {s.step}: {str(e).splitlines()[0][:300]}. Choose a smaller "
                                f"--batch-size, --eval-batch-size or --hidden") from None
        finally:
            self.events.close()
            self.checkpointer.close()
        return self._summary()

    def _log(self, step: int) -> None:
        running = self.session.state.metrics.compute()
        self.bar.set_postfix(loss=f"{running['loss']:.4f}", refresh=False)
        self.events.scalars(step, {"train/running_loss": running["loss"]})

    def _epoch(self, interrupt: Interrupt) -> str:
        s, config, epoch = self.session, self.config, len(self.history["epoch"])
        end = (epoch + 1) * self.steps_per_epoch
        self.bar = tqdm.tqdm(total=self.steps_per_epoch, initial=s.step - epoch * self.steps_per_epoch,
                             desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False, dynamic_ncols=True,
                             mininterval=0.5, disable=not self.primary)
        # The epoch's last step is saved below, with the epoch's history row.
        actions = [Every((config.log_every, config.checkpoint_every), self._log),
                   Every(config.checkpoint_every, lambda step: self.save() if step < end else None)]
        ended = train_steps(s, end, actions, interrupt=interrupt, on_step=lambda: self.bar.update(1))
        self.bar.close()
        if ended == INTERRUPTED:
            self._log(s.step)
            self.save()
            if self.primary:
                print(f"\nInterrupted at step {s.step}; checkpoint saved in {self.checkpointer.directory}. "
                      f"Continue with: python -m pipelines.train --workdir {self.workdir} --resume", flush=True)
            return ended
        self._end_epoch(epoch)
        return ended

    def _end_epoch(self, epoch: int) -> None:
        s, config, history = self.session, self.config, self.history
        train = s.state.metrics.compute()
        val = s.evaluate(s.check_split)
        s.state = reset_metrics(s.state, s.sharding)
        now = self._now()
        for key, value in (("train_loss", train["loss"]), ("train_acc", train["accuracy"]),
                           ("val_loss", val["loss"]), ("val_acc", val["accuracy"]), ("epoch", epoch + 1),
                           ("sequences_seen", s.sequences_seen), ("wall_time_s", round(now, 2))):
            history[key].append(value)
        self.events.scalars(s.step, {"train/loss": train["loss"], "train/accuracy": train["accuracy"],
                                     f"{s.check_split}/loss": val["loss"],
                                     f"{s.check_split}/accuracy": val["accuracy"]})
        if epoch + 1 == config.epochs:  # the test split once, on the final model
            test = val if s.check_split == "test" else s.evaluate("test")
            history["test"] = {"step": s.step, "loss": test["loss"], "accuracy": test["accuracy"]}
            self.events.scalars(s.step, {"test/loss": test["loss"], "test/accuracy": test["accuracy"]})
        if self.primary:
            reporting.write_json(self.workdir / "history.json", history)
            reporting.plot_curves(history, self.workdir / "curves.png", title=f"{config.model} on {config.difficulty}")
        self.save()
        if self.primary:
            tqdm.tqdm.write(f"epoch {epoch + 1}/{config.epochs}: train loss {train['loss']:.4f} "
                            f"acc {train['accuracy']:.4f} | {s.check_split} loss {val['loss']:.4f} "
                            f"acc {val['accuracy']:.4f} | {now:.0f} s" + self._skipped())

    def _skipped(self) -> str:
        # Worth a word when it happens: each is a batch whose gradient overflowed (engine.model.create_tx).
        skipped = skipped_updates(self.session.state.opt_state)
        return f" | {skipped} step(s) skipped so far: gradient not finite" if skipped else ""

    def _summary(self) -> dict:
        s, config, history = self.session, self.config, self.history
        test = history["test"] or {}
        summary = {"interrupted": False, "step": s.step, "workdir": str(self.workdir),
                   "sequences_seen": s.sequences_seen, "parameters": s.parameters, "state_size": s.state_size,
                   "final_test_acc": test.get("accuracy", math.nan),
                   "best_val_acc": max(history["val_acc"], default=math.nan), "wall_time_s": self._now(),
                   "skipped_updates": skipped_updates(s.state.opt_state)}
        if self.primary:
            print(f"Done: {config.model} on {config.difficulty!r}, {summary['sequences_seen']:,} training "
                  f"sequences, test accuracy {summary['final_test_acc']:.4f} (best {history['eval_split']} accuracy "
                  f"{summary['best_val_acc']:.4f}), {summary['wall_time_s']:.0f} s. Wrote history.json, "
                  f"curves.png, config.json, events/ (TensorBoard) and checkpoints/ to {self.workdir}", flush=True)
        return summary


def configure(argv: list[str] | None = None) -> TrainConfig:
    """The run the command line asks for: a fresh run's config, or the saved run's with a resume's changes."""
    flags = config_lib.parse_flags(argv)  # argparse exits with code 2 on a malformed flag
    if "workdir" in flags and not flags["workdir"].strip():
        raise ValueError(f"workdir must name a folder, got {flags['workdir']!r}")  # "" is not "the default"
    if not flags.get("resume"):
        return TrainConfig(**flags).validate()
    fresh = TrainConfig(**{k: v for k, v in flags.items() if k in ("model", "difficulty", "seed", "workdir")})
    saved = workdir_lib.load_config(fresh.workdir)  # RunError when there is nothing to resume
    config, _ = config_lib.amend(saved, flags)  # ValueError listing the settings a resume may not change
    return config.validate()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""

    def go() -> int:
        summary = run(configure(argv))
        return EXIT_INTERRUPTED if summary["interrupted"] else 0

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
