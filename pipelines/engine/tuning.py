"""Tuning a family on a level: an Optuna search over its nuisance parameters, then its seeds at the best.

The family is the scientific variable; the learning rate, the weight decay and, for the Transformer, the
warm-up are nuisance parameters that each (family, level) gets tuned on its own (Google's tuning playbook).
:class:`TunedPlan` is one (family, level) of a study, as a :class:`pipelines.engine.pool.Plan`:

1. **The search.** Optuna's TPE sampler (its first configurations quasi-random) proposes ``configs``
   configurations in waves of ``wave``; each runs on the ``search_seeds`` (2 by default), on validation. A
   configuration's score is the mean over its seeds of a run's score: the training sequences to solve, and for
   an unsolved run the budget plus the budget times its validation error, so that every unsolved run ranks
   after every solved one, by validation accuracy. Optuna is told each wave's scores in the order it proposed
   them, and proposes the next wave only then: the search does not depend on how many workers there are or
   which run ends first.
2. **Pruning.** A search run that clearly trails stops early: at each check past the first ``PRUNE_WARMUP`` of
   its budget, when its validation accuracy is below the median that the finished runs of earlier waves had at
   that check (a finished run keeps its last accuracy after it ends), the median stopping rule of Golovin et
   al. 2017, which is Optuna's ``MedianPruner``. The thresholds travel with the run (``RunSpec.prune_below``),
   so the decision needs no round trip to the command and repeats exactly.
3. **Confirmation.** Two seeds cannot tell a configuration that solves every time from one that solves two
   times in five (version 2's first levels chose such edges: Mamba on ``moderate``, lr 0.014, solved 2 of its 5
   final seeds where the search's next-best solved all). So the ``confirm`` best configurations by the search's
   score that solved at least one run each run on the ``confirm_seeds`` too (2 more, pruned like the search's
   last wave); the one with the fewest unsolved runs over all of its seeds is chosen, ties going to the
   search's order (confirmation checks that a configuration solves reliably; it does not re-rank by speed, so
   configurations that both always solve keep the search's choice). With fewer than 2 such configurations
   there is nothing to confirm, and the search's best is chosen.
4. **The seeds.** The chosen configuration's ``final_seeds`` (5 by default) run to the stop rule or the budget,
   never pruned, to the ``final_budget`` (by default the search's; more where the level's slowest solved median
   asked for it, docs/leaderboard.md). The table reports those. Final runs saved for another configuration
   (chosen before the confirmation existed), or unsolved within a smaller budget than the final one, are set
   aside, not overwritten (``on_superseded``), and redone.

Every run is saved as it ends; a rerun replays the search from the saved runs (the same sampler seed and the
same scores give the same proposals) and goes on where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from pipelines.engine.pool import Job
from pipelines.engine.solving import RunResult, RunSpec, run_one
from pipelines.engine.study import StudyError

PRUNE_WARMUP = 0.2
"""No run is pruned before it has read this share of its budget."""
PRUNE_MIN_FINISHED = 4
"""Pruning starts once at least this many search runs of the (family, level) have finished."""


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The ranges a family's search draws from (log-uniform; ``warmup`` in optimizer steps, uniform)."""

    lr: tuple[float, float] = (1e-4, 3e-2)
    weight_decay: tuple[float, float] = (1e-6, 1e-1)
    warmup: tuple[int, int] | None = None

    def suggest(self, trial) -> dict[str, float | int]:
        """A configuration from an Optuna trial."""
        out = {"lr": trial.suggest_float("lr", *self.lr, log=True),
               "weight_decay": trial.suggest_float("weight_decay", *self.weight_decay, log=True)}
        if self.warmup is not None:
            out["warmup_steps"] = trial.suggest_int("warmup_steps", *self.warmup)
        return out

    def describe(self) -> str:
        """The space in words, for the docs and the records."""
        parts = [f"lr log-uniform in [{self.lr[0]:g}, {self.lr[1]:g}]",
                 f"weight decay log-uniform in [{self.weight_decay[0]:g}, {self.weight_decay[1]:g}]"]
        if self.warmup is not None:
            parts.append(f"warm-up uniform in [{self.warmup[0]}, {self.warmup[1]}] steps")
        return ", ".join(parts)


def score(result: RunResult, budget: int) -> float:
    """A run's score, lower is better: sequences to solve; unsolved, the budget plus budget x validation error."""
    if result.solved:
        return float(result.sequences_to_solve)
    accuracy = result.validation_accuracy if result.validation_accuracy is not None else 0.0
    return budget * (2.0 - accuracy)


def prune_thresholds(finished: Sequence[RunResult], checks: int, budget: int, check_every: int) -> tuple[float, ...]:
    """Per check, the median validation accuracy of the ``finished`` runs there (each holding its last value
    after it ended); 0 (never prune) before PRUNE_WARMUP of the budget or with too few finished runs."""
    if len(finished) < PRUNE_MIN_FINISHED:
        return ()
    out = []
    for k in range(checks):
        if (k + 1) * check_every < PRUNE_WARMUP * budget:
            out.append(0.0)
            continue
        at_k = [r.curve[min(k, len(r.curve) - 1)][1] for r in finished if r.curve]
        out.append(float(statistics.median(at_k)) if at_k else 0.0)
    return tuple(out)


def _sampler_seed(cell: str, level: str, recipe: str) -> int:
    return zlib.crc32(f"{cell}|{level}|{recipe}".encode())


class TunedPlan:
    """One (family, level) of a tuned study: the search in waves, then the final seeds (see the module)."""

    def __init__(self, base: RunSpec, space: SearchSpace, done: dict[str, RunResult], *, configs: int = 8,
                 wave: int = 2, search_seeds: Sequence[int] = (100, 101), final_seeds: Sequence[int] = (0, 1, 2, 3, 4),
                 confirm: int = 2, confirm_seeds: Sequence[int] = (102, 103), final_budget: int | None = None,
                 data_dir=None, snapshots=None,
                 on_chosen: Callable[[TunedPlan], None] | None = None,
                 on_superseded: Callable[[list[RunSpec]], None] | None = None):
        import warnings

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # multivariate TPE
        self.base, self.space, self.results, self.data_dir = base, space, done, data_dir  # results: shared
        self.snapshots = snapshots  # where its runs save themselves mid-way (None: they do not)
        self.configs, self.wave = configs, wave
        self.search_seeds, self.final_seeds = tuple(search_seeds), tuple(final_seeds)
        self.confirm, self.confirm_seeds = confirm, tuple(confirm_seeds)
        self.final_budget = final_budget or base.budget
        sampler = optuna.samplers.TPESampler(seed=_sampler_seed(base.cell, base.level, base.recipe),
                                             n_startup_trials=min(4, configs), multivariate=True)
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        self.trials: list[tuple[Any, dict]] = []  # (optuna trial, configuration), in proposal order
        self.scores: dict[int, float] = {}
        self.handed: set[str] = set()
        self.best: dict | None = None
        self.candidates: list[int] | None = None  # the configurations confirmed (None before the search ends)
        self.on_chosen, self.on_superseded = on_chosen, on_superseded
        self._advance()

    # ------------------------------------------------------------------------------------------ runs

    def spec(self, config: dict, seed: int, role: str, prune_below: tuple[float, ...] = ()) -> RunSpec:
        """The run of ``config`` from ``seed`` in ``role`` ('t03', 'final')."""
        return dataclasses.replace(self.base, seed=seed, role=role, prune_below=prune_below,
                                   **{k: (float(v) if k != "warmup_steps" else int(v)) for k, v in config.items()})

    def _checks(self) -> int:
        steps_per_check = max(1, self.base.check_every // self.base.batch_size)
        return -(-self.base.budget // (steps_per_check * self.base.batch_size))

    def _search_specs(self, index: int) -> list[RunSpec]:
        trial, config = self.trials[index]
        wave_start = index - index % self.wave
        finished = [self.results[s.key] for i in range(wave_start) for s in self._search_specs_plain(i)]
        thresholds = prune_thresholds(finished, self._checks(), self.base.budget, self.base.check_every)
        return [self.spec(config, seed, f"t{index:02d}", thresholds) for seed in self.search_seeds]

    def _search_specs_plain(self, index: int) -> list[RunSpec]:
        # The keys of a configuration's runs do not depend on their thresholds.
        return [self.spec(self.trials[index][1], seed, f"t{index:02d}") for seed in self.search_seeds]

    def _confirm_specs(self, index: int) -> list[RunSpec]:
        # Pruned against every search run: all have finished before any confirmation starts.
        finished = [self.results[s.key] for i in range(len(self.trials)) for s in self._search_specs_plain(i)]
        thresholds = prune_thresholds(finished, self._checks(), self.base.budget, self.base.check_every)
        return [self.spec(self.trials[index][1], seed, f"t{index:02d}", thresholds) for seed in self.confirm_seeds]

    def _confirm_specs_plain(self, index: int) -> list[RunSpec]:
        return [self.spec(self.trials[index][1], seed, f"t{index:02d}") for seed in self.confirm_seeds]

    def final_specs(self) -> list[RunSpec]:
        """The chosen configuration's final seeds (none before the search ends)."""
        return [] if self.best is None else [dataclasses.replace(self.spec(self.best, seed, "final"),
                                                                 budget=self.final_budget)
                                             for seed in self.final_seeds]

    def _as_saved(self, spec: RunSpec) -> RunSpec:
        # A final run that solved within a smaller budget is the same run as one with the final budget (nothing
        # in a run but its length depends on its budget; tests/test_tuning.py checks it): it stands as saved.
        saved = self.results.get(spec.key)
        if saved is not None and saved.solved and saved.budget is not None and saved.budget < spec.budget:
            return dataclasses.replace(spec, budget=saved.budget)
        return spec

    def known_specs(self) -> list[RunSpec]:
        """Every run proposed so far: the search's, its confirmation's, then the final seeds'."""
        return ([s for i in range(len(self.trials)) for s in self._search_specs(i)]
                + [s for i in self.candidates or () for s in self._confirm_specs(i)]
                + [self._as_saved(s) for s in self.final_specs()])

    def row_specs(self) -> list[RunSpec]:
        """The runs of the table's row: the final seeds."""
        return self.final_specs()

    # ------------------------------------------------------------------------------------------ the search

    def _advance(self) -> None:
        """Tells Optuna every finished configuration in proposal order, proposes the next wave once the last one
        is told, and chooses once the search is over."""
        while True:
            for i in range(len(self.trials)):
                if i in self.scores:
                    continue
                runs = [self.results.get(s.key) for s in self._search_specs_plain(i)]
                if any(r is None for r in runs):
                    return  # the wave in flight is not finished
                self._check_saved(i, runs)
                self.scores[i] = statistics.fmean(score(r, self.base.budget) for r in runs)
                self.study.tell(self.trials[i][0], self.scores[i])
            if len(self.trials) >= self.configs:
                if self.best is None:
                    self._choose()
                return
            for _ in range(min(self.wave, self.configs - len(self.trials))):
                trial = self.study.ask()
                self.trials.append((trial, self.space.suggest(trial)))

    def _runs(self, index: int) -> list[RunResult | None]:
        """A configuration's runs: the search's seeds, then its confirmation's where it is confirmed."""
        specs = self._search_specs_plain(index) + (self._confirm_specs_plain(index) if index in (self.candidates or ())
                                                   else [])
        return [self.results.get(s.key) for s in specs]

    def _choose(self) -> None:
        """Confirms the best configurations on more seeds, then chooses (once every run it needs is in)."""
        if self.candidates is None:
            ranked = sorted(self.scores, key=lambda i: (self.scores[i], i))
            solving = [i for i in ranked[:self.confirm] if any(r.solved for r in self._runs(i))]
            self.candidates = solving if len(solving) >= 2 and self.confirm_seeds else []
        if not self.candidates:
            chosen = min(self.scores, key=lambda i: (self.scores[i], i))
        else:
            runs = {i: self._runs(i) for i in self.candidates}
            if any(r is None for rs in runs.values() for r in rs):
                return  # the confirmation in flight is not finished
            for i, rs in runs.items():
                self._check_saved(i, rs)
            chosen = min(runs, key=lambda i: (sum(not r.solved for r in runs[i]), self.scores[i], i))
        self.best = self.trials[chosen][1]
        self._set_aside_stale_finals()
        self._set_aside_short_finals()
        if self.on_chosen:
            self.on_chosen(self)

    def _set_aside_stale_finals(self) -> None:
        """Final runs saved at another configuration than the one chosen leave the results (see the module)."""
        stale = [s for s in self.final_specs() if s.key in self.results and self.results[s.key].lr is not None
                 and not math.isclose(self.results[s.key].lr, self.best["lr"], rel_tol=1e-9)]
        self._set_aside([dataclasses.replace(s, lr=self.results[s.key].lr) for s in stale], "",
                        f"were saved at another configuration (lr {self.results[stale[0].key].lr:g}) than the "
                        f"search now chooses (lr {self.best['lr']:g})" if stale else "")

    def _set_aside_short_finals(self) -> None:
        """Final runs that ended unsolved within a smaller budget than the final one leave the results: they
        are redone to the final budget (a solved one stands, see ``_as_saved``)."""
        short = [s for s in self.final_specs() if s.key in self.results and not self.results[s.key].solved
                 and (self.results[s.key].budget or 0) < s.budget]
        budget = self.results[short[0].key].budget if short else 0
        self._set_aside(short, f"budget{budget}", f"ended unsolved within {budget:,} sequences, less than the final "
                                                  f"budget {self.final_budget:,}")

    def _set_aside(self, specs: list[RunSpec], label: str, why: str) -> None:
        """Hands ``specs``' saved runs to ``on_superseded`` (which keeps them apart) and drops them from the
        results, so that they run again; a StudyError, saying ``why``, if nobody takes them."""
        if not specs:
            return
        if self.on_superseded is None:
            raise StudyError(f"final runs of {self.base.cell} on {self.base.level} {why}; move them away or choose "
                             f"another --out")
        self.on_superseded(specs, label)
        for s in specs:
            del self.results[s.key]

    def _check_saved(self, index: int, runs: list[RunResult]) -> None:
        config = self.trials[index][1]
        for r in runs:
            if r.lr is not None and not math.isclose(r.lr, config["lr"], rel_tol=1e-9):
                raise StudyError(f"the saved search run {r.cell} on {r.level}, configuration {index}, has lr {r.lr:g} "
                                 f"where the search now proposes {config['lr']:g}: the search changed since it was "
                                 f"saved; continue it with the version that made it, or choose another --out")

    # ------------------------------------------------------------------------------------------ Plan

    def ready(self) -> list[Job]:
        """The proposed configurations' runs, then the final seeds', not done nor handed out."""
        specs = self.known_specs()
        jobs = [Job(s.key, run_one, (s, self.data_dir, self.snapshots)) for s in specs
                if s.key not in self.results and s.key not in self.handed]
        self.handed.update(j.key for j in jobs)
        return jobs

    def finished(self, job: Job, outcome: Any) -> None:
        """Records a finished run of this plan; a finished wave lets the search go on."""
        spec = job.args[0] if job.fn is run_one else None
        if spec is not None and (spec.cell, spec.level, spec.recipe) == (self.base.cell, self.base.level,
                                                                          self.base.recipe):
            self.results[job.key] = outcome[0]
            self._advance()

    @property
    def done(self) -> bool:
        """Whether the search and the final seeds have all finished."""
        return self.best is not None and all(s.key in self.results for s in self.final_specs())

    def total(self) -> int:
        """How many runs the plan holds: the search's, its confirmation's and the final seeds'."""
        return (self.configs * len(self.search_seeds) + self.confirm * len(self.confirm_seeds)
                + len(self.final_seeds))

    def finished_count(self) -> int:
        """How many of them are done (a confirmation not needed counts as done once that is known)."""
        keys = {s.key for i in range(len(self.trials)) for s in self._search_specs_plain(i)}
        keys |= {s.key for i in self.candidates or () for s in self._confirm_specs_plain(i)}
        # A final run's key does not depend on the configuration, so saved final runs count also while the
        # choice waits on its confirmation (after a restart, say), and a resumed study's count does not drop.
        keys |= {dataclasses.replace(self.base, seed=seed, role="final").key for seed in self.final_seeds}
        skipped = 0 if self.candidates is None else (self.confirm - len(self.candidates)) * len(self.confirm_seeds)
        return len(keys & self.results.keys()) + skipped
