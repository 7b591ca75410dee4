"""The leaderboard's grid, shared by ``pipelines.experiment`` (the families on the levels) and ``pipelines.lengthgen``
(the families trained by each length-generalisation recipe): the families as the grid trains them, the runs of
a (family, level) under a protocol (a learning-rate grid, :class:`CellPlan`, or a tuned search,
``pipelines.engine.tuning.TunedPlan``), the evaluations at length of the trained models (:class:`LengthPlan`),
and the driver that writes each finished run into the study as it arrives (:class:`Driver`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from pipelines.engine import leaderboard, reporting, snapshots
from pipelines.engine.evaluator import Evaluator
from pipelines.engine.pool import Finished, Job, Pool
from pipelines.engine.session import ensure_built
from pipelines.engine.sharding import Sharding
from pipelines.engine.snapshots import INFLIGHT
from pipelines.engine.solving import (SOLVED_ERROR, RunResult, RunSpec, model_with_params, run_one, save_params,
                                      write_events)
from pipelines.engine.study import Study, StudyError, has_runs
from pipelines.engine.tuning import SearchSpace, TunedPlan
from qrsu_data import splits
from qrsu_models import registry


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family as the experiment trains it: its size, its learning-rate grid, its initialisation."""

    name: str
    hidden: int
    lrs: tuple[float, ...]
    init: str
    options: tuple[tuple[str, object], ...] = ()
    space: SearchSpace = SearchSpace()
    """What the tuned protocol searches over for this family."""

    def options_json(self) -> str:
        """The family's model options beyond its width, as RunSpec stores them."""
        return json.dumps(dict(self.options), sort_keys=True)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("lstm", 64, (1e-3, 2e-3, 4e-3), "chrono gate biases (Tallec & Ollivier 2018), orthogonal recurrent "
           "kernels"),
    Family("gru", 80, (1e-3, 2e-3, 4e-3), "flax's: lecun-normal input, orthogonal recurrent, zero biases"),
    Family("rnn", 136, (1e-3, 2e-3, 4e-3), "flax's SimpleCell: lecun-normal input, orthogonal recurrent"),
    Family("lru", 64, (1e-3, 3e-3, 1e-2), "the paper's for long ranges (its PathX): |lambda| uniform on the ring "
           "[0.999, 0.9999], phases in [0, pi/10], gamma = sqrt(1 - |lambda|^2), B and C complex Glorot-scaled",
           options=(("r_max", 0.9999), ("r_min", 0.999), ("theta_max", math.pi / 10))),
    Family("mingru", 72, (1e-3, 3e-3, 1e-2), "flax's Linear defaults (lecun-normal, zero biases)"),
    Family("minlstm", 64, (1e-3, 3e-3, 1e-2), "flax's Linear defaults (lecun-normal, zero biases)"),
    Family("mingru3", 42, (1e-3, 3e-3, 1e-2), "as mingru, 3 blocks (the depth of its paper's experiments)"),
    Family("minlstm3", 38, (1e-3, 3e-3, 1e-2), "as minlstm, 3 blocks (the depth of its paper's experiments)"),
    Family("mamba", 48, (1e-3, 3e-3, 1e-2), "the paper's: A_n = -(n+1) (S4D-real), Delta log-uniform in "
           "[0.001, 0.1], D = 1"),
    Family("transformer", 64, (5e-4, 1e-3, 2e-3), "flax's Linear and Embed defaults, LayerNorm at 1 and 0; "
           "rotary positions, nothing learned about position",
           space=SearchSpace(lr=(3e-5, 1e-2), warmup=(0, 1000))),
)}
"""The families of the default grid, each at about 20k-60k parameters (the LSTM at hidden 64 has 18,948)."""

BUDGETS = {"easy": 8_000, "normal": 16_000, "moderate": 20_000, "hard": 20_000, "nightmare": 66_000,
           "exp6b": 48_000}
"""Training sequences a run may use, per level: at least 4x the LSTM's median to solve it (1,280 on easy,
3,200 normal, 4,160 moderate, 3,840 hard, 16,320 nightmare, 10,880 exp6b), so "not solved" means something."""
CHECK_EVERY = {"easy": 320, "normal": 320, "moderate": 320, "hard": 320, "nightmare": 1920, "exp6b": 640}
"""Training sequences between two validation checks, per level (a nightmare check costs 5x a hard one)."""
LENGTHGEN_LENGTHS = (200, 500, 1000, 2000, 5000, 10000)
"""Longest sequences of the suite's scaled configs that models trained on hard are evaluated on."""
LENGTHGEN_LIMIT = 1024
"""Test sequences evaluated per suite config (a Transformer's attention at length 5,000 is costly on a CPU)."""
PROTOCOLS = ("tuned", "grid")
"""'tuned' (version 2, the default): per (family, level) an Optuna search over the learning rate, the weight
decay (and the Transformer's warm-up), then 5 final seeds at the best configuration (pipelines.engine.tuning);
'grid' (version 1): a learning-rate grid on the first seed, then the other seeds at the best rate."""
V1_SLOWEST_SOLVED = {"easy": 640, "normal": 5_760, "moderate": 6_240, "hard": 8_640, "nightmare": 40_320,
                     "exp6b": 27_520}
"""Per level, the slowest median sequences-to-solve of any family that solved it in version 1 (docs/leaderboard:
rnn on normal, mingru on moderate and hard, minlstm on nightmare, gru on exp6b)."""
TUNED_BUDGETS = {"easy": 10_000, "normal": 30_000, "moderate": 50_000, "hard": 100_000, "nightmare": 210_000,
                 "exp6b": 150_000}
"""Version 2: training sequences a run may use, per level, the same for every family: at least 5x the slowest
solved median of any family on the level, and at least 100,000 on hard and exp6b (docs/leaderboard.md)."""
TUNED_FINAL_BUDGETS = {"normal": 75_000, "moderate": 110_000, "hard": 160_000}
"""Version 2: the final seeds' budget where it exceeds the search's: 5x the level's slowest solved median among
version 2's own final seeds at the search's budget (docs/leaderboard2/budget.md: the RNN's 14,080 on normal,
minGRU's 21,760 on moderate, the 3-block minLSTM's 32,000 on hard), rounded up. The search keeps TUNED_BUDGETS
(its pruning depends on the budget); the final seeds that solved within it stand, the others run on."""
TUNED_CHECK_EVERY = {"easy": 320, "normal": 640, "moderate": 1280, "hard": 1600, "nightmare": 3200, "exp6b": 1600}
"""Version 2: training sequences between two validation checks (about 60 checks in a budget)."""
KIND = "experiment"


def results_of(study: Study) -> dict[str, RunResult]:
    """Every finished run of ``study``, by key."""
    out = {}
    for key, record in study.records().items():
        try:
            out[key] = RunResult.from_json(record["result"])
        except (KeyError, TypeError) as e:
            raise StudyError(f"{study.path('runs', key + '.json')} is not a finished run of this experiment "
                             f"({type(e).__name__}: {e}); move it away and run again (the run is then redone)"
                             ) from None
    return out


def load_results(out: Path) -> list[RunResult]:
    """Every finished run saved in ``out`` (its runs/ folder, or a results.json of an earlier version)."""
    if has_runs(out):
        return list(results_of(Study(out, KIND)).values())
    path = out / "results.json"
    try:
        rows = json.loads(path.read_text())
        return [RunResult.from_json(row) for row in rows]
    except FileNotFoundError:
        raise StudyError(f"{path} does not exist: give the --out folder of an earlier experiment") from None
    except (ValueError, TypeError, KeyError) as e:
        raise StudyError(f"{path} is not an experiment's results.json ({e})") from None


def saved_lengthgen(out: Path) -> tuple[dict[str, dict[str, list[float]]], str]:
    """(family -> suite config -> accuracies by seed, the level trained on) of every evaluation in ``out``/lengthgen."""
    table: dict[str, dict[str, list[float]]] = {}
    levels = set()
    results = results_of(Study(out, KIND)) if has_runs(out) else {}
    # The runs of each row (a grid's chosen rate, a search's final seeds): a grid whose choice moved to a rate
    # added later keeps its earlier rate's evaluations on disk, and they are not the row's.
    rows = {id(r) for selection in leaderboard.select(list(results.values())).values() for r in selection.runs}
    # Every row's saved run with an evaluation, by family and seed (one whose run was moved away is ignored).
    for key, result in sorted(results.items(), key=lambda item: (item[1].cell, item[1].seed)):
        path = out / "lengthgen" / f"{key}.json"
        if id(result) not in rows or not path.is_file():
            continue
        levels.add(result.level)
        for config, accuracy in json.loads(path.read_text()).items():
            table.setdefault(result.cell, {}).setdefault(config, []).append(accuracy)
    return table, ", ".join(sorted(levels))


def family(name: str) -> Family:
    """The family settings of ``name`` (a model of your own gets the LSTM's learning rates and hidden 64)."""
    registry.get(name)  # ValueError naming the valid models
    return FAMILIES.get(name, Family(name, 64, FAMILIES["lstm"].lrs, "the model's own"))


class Grid:
    """The experiment's runs: their settings, the learning rates tried, the (family, level) pairs."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def family(self, cell: str) -> Family:
        """How the grid trains ``cell``: ``args.families``' entry where given, else the leaderboard's."""
        families = getattr(self.args, "families", None) or {}
        return families[cell] if cell in families else family(cell)

    def spec(self, cell: str, level: str, lr: float, seed: int) -> RunSpec:
        """The run of ``cell`` on ``level`` at ``lr`` from ``seed``."""
        f = self.family(cell)
        tuned = self.args.protocol == "tuned"
        checks = TUNED_CHECK_EVERY if tuned else CHECK_EVERY
        return RunSpec(cell, level, seed, budget=self.budget(level),
                       check_every=self.args.check_every or checks.get(level, 1600 if tuned else 320),
                       batch_size=self.args.batch_size, lr=lr, clip_norm=self.args.clip_norm,
                       optimizer=getattr(self.args, "optimizer", "adam"),
                       hidden=self.args.hidden or f.hidden, grad_threads=self.args.grad_threads,
                       model_options=f.options_json(), bucket_width=self.args.bucket_width,
                       initial_state=self.args.initial_state, noise_std=self.args.noise_std, omega=self.args.omega,
                       solved_error=getattr(self.args, "solved_error", SOLVED_ERROR),
                       train_through=getattr(self.args, "train_through", False))

    def budget(self, level: str) -> int:
        """Training sequences a run on ``level`` may use (a tuned study's search runs): --budget, else the
        protocol's per-level budget."""
        if self.args.protocol == "tuned":
            return self.args.budget or TUNED_BUDGETS.get(level, 100_000)
        return self.args.budget or BUDGETS.get(level, 20_000)

    def final_budget(self, level: str) -> int:
        """The tuned protocol's budget for the final seeds on ``level``: --final-budget, else --budget, else
        TUNED_FINAL_BUDGETS' or the search's."""
        return (getattr(self.args, "final_budget", None) or self.args.budget or TUNED_FINAL_BUDGETS.get(level)
                or self.budget(level))

    def lrs(self, cell: str) -> tuple[float, ...]:
        """The learning rates tried for ``cell``: --lrs, else its family's grid."""
        return tuple(self.args.lrs) if self.args.lrs else self.family(cell).lrs

    def selection_specs(self, cell: str, level: str) -> list[RunSpec]:
        """Stage 1: every learning rate on the selection seeds."""
        return [self.spec(cell, level, lr, seed) for lr in self.lrs(cell)
                for seed in self.args.seeds[:self.args.lr_seeds]]

    def chosen_specs(self, cell: str, level: str, lr: float) -> list[RunSpec]:
        """Stage 2: the other seeds at the chosen learning rate."""
        return [self.spec(cell, level, lr, seed) for seed in self.args.seeds[self.args.lr_seeds:]]

    def pairs(self) -> list[tuple[str, str]]:
        """The (family, level) pairs to run, level by level."""
        return [(c, lv) for lv in self.args.levels for c in self.args.cells]

    def total(self) -> int:
        """How many tasks the grid holds: its runs, and the evaluations at length of its rows' models."""
        seeds, out = self.args.seeds, 0
        for cell, level in self.pairs():
            if self.args.protocol == "tuned":
                out += (self.args.configs * len(self.args.search_seeds)
                        + getattr(self.args, "confirm", 0) * len(getattr(self.args, "confirm_seeds", ())) + len(seeds))
            else:
                out += len(self.lrs(cell)) * len(seeds[:self.args.lr_seeds]) + len(seeds[self.args.lr_seeds:])
            out += len(seeds) * len(self.lengthgen_configs(level))
        return out

    def plan(self, cell: str, level: str, done: dict[str, RunResult], data_dir, on_superseded=None, snapshots=None):
        """The plan of (``cell``, ``level``) under the protocol: a learning-rate grid or a tuned search
        (``on_superseded`` receives its final runs saved at a configuration it no longer chooses; its runs save
        themselves mid-way in ``snapshots``)."""
        if self.args.protocol == "grid":
            return CellPlan(self, cell, level, done, data_dir, snapshots)
        return TunedPlan(self.spec(cell, level, self.family(cell).lrs[0], 0), self.family(cell).space, done,
                         configs=self.args.configs, wave=self.args.wave, search_seeds=self.args.search_seeds,
                         final_seeds=self.args.seeds, confirm=getattr(self.args, "confirm", 0),
                         confirm_seeds=getattr(self.args, "confirm_seeds", ()),
                         final_budget=self.final_budget(level), data_dir=data_dir,
                         on_superseded=on_superseded, snapshots=snapshots)

    def lengthgen_configs(self, level: str) -> list[str]:
        """The configs the models trained on ``level`` are evaluated on: the lengthgen level's suite at the
        lengthgen lengths, for that level and its levels of varied length (``hard-var50to200`` trains for
        ``hard``'s suite); or ``args.eval_configs`` where given."""
        explicit = getattr(self.args, "eval_configs", None)
        if explicit:
            return list(explicit)
        if level.split("-var")[0] != self.args.lengthgen_level:
            return []
        return [f"{self.args.lengthgen_level}-len{n}" for n in self.args.lengthgen_lengths or ()]

    def eval_limit(self) -> int:
        """Test sequences evaluated per config at length."""
        return getattr(self.args, "eval_limit", None) or LENGTHGEN_LIMIT


EVAL_BATCH_TOKENS = 1_000_000
"""Tokens per batch of an evaluation at length (at most 1,024 sequences)."""


def evaluate_lengths(spec: RunSpec, flat: dict[str, np.ndarray], configs: list[str], data_dir,
                     limit: int = LENGTHGEN_LIMIT, inflight=None, monitor=None) -> dict[str, float]:
    """Test accuracy of the model of run ``spec`` with parameters ``flat`` (solving.flat_params) on each suite
    config (its first ``limit`` test sequences); a task of the pool. With ``inflight`` (a study's folder of
    snapshots) each config's count is saved batch by batch and a stopped evaluation goes on where it was."""
    record = {}
    for config, (dataset, evaluator, params) in zip(configs, evaluators_at(spec, flat, configs, data_dir)):
        batch = evaluator.batch_size
        if inflight is None:
            record[config] = evaluator.evaluate(params, dataset, "test", data_dir=data_dir, limit=limit)["accuracy"]
            continue
        tally = snapshots.Tally(Path(inflight) / tally_name(spec, config),
                                {**dataclasses.asdict(spec), "evaluate": config, "limit": limit})
        scored, wrong = tally.restore()
        total = min(limit, dataset.size("test")) if limit else dataset.size("test")
        while scored < total:  # one batch at a time, each counted and saved as it is done
            predictions = evaluator.predict(params, dataset, "test", data_dir=data_dir,
                                            limit=min(scored + batch, total), start=scored)
            scored, wrong = scored + len(predictions.labels), wrong + predictions.wrong
            tally.save(scored, wrong)
            if monitor is not None:
                monitor(scored, 1.0 - wrong / scored)
        record[config] = 1.0 - wrong / total
    return record


def evaluators_at(spec: RunSpec, flat: dict[str, np.ndarray], configs: list[str], data_dir
                  ) -> Iterator[tuple[splits.SplitSpec, Evaluator, dict]]:
    """For each suite config in turn: its dataset (built if need be), an evaluator of run ``spec``'s model at its
    length, and the model's parameters (from ``flat``)."""
    model, params = model_with_params(spec, flat, data_dir)
    sharding = Sharding.create()
    for config in configs:
        dataset = splits.SplitSpec.parse(config)
        ensure_built(dataset, data_dir)
        yield dataset, Evaluator(model, sharding, eval_batch(sharding, dataset)), params


def eval_batch(sharding: Sharding, dataset: splits.SplitSpec) -> int:
    """The evaluation batch at ``dataset``'s length: at most ~1M tokens (the Transformer's attention grows with
    the square of length), at most 1,024 rows, a multiple of the devices."""
    batch = max(sharding.num_devices, min(1024, EVAL_BATCH_TOKENS // dataset.level_def.max_length))
    return batch - batch % sharding.num_devices


def tally_name(spec: RunSpec, config: str) -> str:
    """The folder of inflight/ where the evaluation of run ``spec``'s model on ``config`` keeps its count."""
    return f"{spec.key}@{config}"


class CellPlan:
    """One (family, level) of the learning-rate grid: its learning rates on the selection seeds, then its other
    seeds at the rate chosen on validation."""

    def __init__(self, grid: Grid, cell: str, level: str, done: dict[str, RunResult], data_dir, snapshots=None):
        self.grid, self.cell, self.level, self.data_dir, self.snapshots = grid, cell, level, data_dir, snapshots
        every = [*grid.selection_specs(cell, level),
                 *(s for lr in grid.lrs(cell) for s in grid.chosen_specs(cell, level, lr))]
        self.results = {s.key: done[s.key] for s in every if s.key in done}
        self.handed: set[str] = set()
        self.stage1 = grid.selection_specs(cell, level)
        self.lr: float | None = None

    def specs(self) -> list[RunSpec]:
        """The runs known so far: stage 1, and stage 2 once the rate is chosen."""
        if self.lr is None and len(self.grid.lrs(self.cell)) == 1:
            self.lr = self.grid.lrs(self.cell)[0]  # nothing to choose: its models are the row's as they finish
        if self.lr is None and all(s.key in self.results for s in self.stage1):
            self.lr = leaderboard.select([self.results[s.key] for s in self.stage1])[(self.cell, self.level)].lr
        return self.stage1 + (self.grid.chosen_specs(self.cell, self.level, self.lr) if self.lr is not None else [])

    def row_specs(self) -> list[RunSpec]:
        """The runs of the table's row: every seed at the chosen rate (none before it is chosen)."""
        return [s for s in self.specs() if self.lr is not None and s.lr == self.lr]

    def ready(self) -> list[Job]:
        """Runs not done nor handed out."""
        jobs = [Job(s.key, run_one, (s, self.data_dir, self.snapshots)) for s in self.specs()
                if s.key not in self.results and s.key not in self.handed]
        self.handed.update(j.key for j in jobs)
        return jobs

    def finished(self, job: Job, outcome: Any) -> None:
        """Records a finished run of this plan."""
        if job.key in {s.key for s in self.specs()}:
            self.results[job.key] = outcome[0]

    @property
    def done(self) -> bool:
        """Every run done."""
        return all(s.key in self.results for s in self.specs())

    def finished_count(self) -> int:
        """How many of its runs are done."""
        return sum(s.key in self.results for s in self.specs())


def eval_key(spec: RunSpec, config: str) -> str:
    """The task that evaluates the model of run ``spec`` on ``config``."""
    return f"eval:{spec.key}@{config}"


class LengthPlan:
    """The evaluations at length of the models in a plan's row (the chosen configuration's seeds): a task per
    model and config once its run has finished, so that a stopped study keeps every config evaluated (a
    Transformer's at 10,000 alone takes minutes) and one model's configs can go to several workers."""

    def __init__(self, source, configs: list[str], evaluated: dict[str, set[str]], params_of, data_dir,
                 limit: int = LENGTHGEN_LIMIT, inflight=None):
        self.source, self.configs, self.params_of, self.data_dir = source, configs, params_of, data_dir
        self.limit, self.inflight = limit, inflight
        self.evaluated = evaluated  # run key -> configs evaluated; shared with the Driver, which sets runs aside
        self.handed: set[str] = set()

    def _finished_rows(self) -> list[RunSpec]:
        return [s for s in self.source.row_specs() if s.key in self.source.results]

    def _missing(self, spec: RunSpec) -> list[str]:
        return [c for c in self.configs if c not in self.evaluated.get(spec.key, ())]

    def ready(self) -> list[Job]:
        """An evaluation per finished model of the row and config, not evaluated nor handed out."""
        jobs = []
        for spec in self._finished_rows():
            missing = [c for c in self._missing(spec) if eval_key(spec, c) not in self.handed]
            params = self.params_of(spec) if missing else None
            if params is not None:
                jobs += [Job(eval_key(spec, c), evaluate_lengths,
                             (spec, params, [c], self.data_dir, self.limit, self.inflight)) for c in missing]
        self.handed.update(j.key for j in jobs)
        return jobs

    def finished(self, job: Job, outcome: Any) -> None:
        """Records a finished evaluation."""
        if job.key in self.handed:
            self.evaluated.setdefault(job.args[0].key, set()).update(outcome)

    @property
    def done(self) -> bool:
        """The source's runs all done, and every model of its row evaluated on every config."""
        return self.source.done and not any(self._missing(s) for s in self.source.row_specs())

    def finished_count(self) -> int:
        """How many evaluations (model, config) are done."""
        return sum(len(self.configs) - len(self._missing(s)) for s in self.source.row_specs())


def saved_files(key: str) -> list[tuple[str, str]]:
    """What a study keeps of the run ``key``, as (folder, name): record, model, events, evaluations at length."""
    return [("runs", f"{key}.json"), ("models", f"{key}.npz"), ("events", key), ("lengthgen", f"{key}.json")]


def redo(study: Study, cells: list[str], levels: list[str], label: str) -> int:
    """Moves every saved run of ``cells`` on ``levels`` into superseded/``label``/ (kept, out of the table, to be
    redone); how many. Refused, moving nothing, if that folder exists: a redo under that label has begun."""
    target = study.path("superseded", label)
    if target.exists():
        raise StudyError(f"--redo {label}: {target} exists already, so a redo under that label has begun; run the "
                         f"same command without --redo to continue it, or give another label")
    keys = [key for key, record in study.records().items()
            if record["settings"].get("cell") in cells and record["settings"].get("level") in levels]
    for key in keys:
        study.set_aside(saved_files(key), label)
    for path in study.path(INFLIGHT).glob("*"):  # a run in flight is redone from its start too
        settings = snapshots.settings_of(path)
        if settings is None or (settings.get("cell") in cells and settings.get("level") in levels):
            snapshots.discard(path)
    print(f"--redo {label}: set aside {len(keys)} saved run(s) of {', '.join(cells)} on {', '.join(levels)} in "
          f"{target}; they are redone now", flush=True)
    return len(keys)


class Driver:
    """The grid's writer: each finished run's record, model and events, each evaluation's record, as they come."""

    def __init__(self, study: Study, keep_params: bool, evaluated: dict[str, set[str]] | None = None):
        self.study, self.keep_params = study, keep_params
        self.evaluated = {} if evaluated is None else evaluated  # run key -> configs evaluated (LengthPlans share it)

    def set_aside(self, specs: list[RunSpec], label: str = "") -> None:
        """Moves the saved runs of ``specs`` (final runs of a configuration no longer chosen, or unsolved within
        a smaller budget than the final one), with their models, events and evaluations at length, into
        superseded/``label``/ of the study (default lr<lr>): kept, out of the table, and redone."""
        for spec in specs:
            label_of = label or f"lr{spec.lr:g}"
            moved = self.study.set_aside(saved_files(spec.key), label_of)
            self.evaluated.pop(spec.key, None)
            if moved:
                print(f"{spec.key}: set aside in {self.study.path('superseded', label_of)} and redone ("
                      + ("unsolved within a smaller budget than the final one" if label else
                         f"saved at lr {spec.lr:g}, which the search no longer chooses") + ")", flush=True)

    def params_of(self, spec: RunSpec):
        """The saved parameters of a finished run (None if its model was not kept)."""
        path = self.study.path("models", f"{spec.key}.npz")
        if not path.is_file():
            return None
        with np.load(path) as saved:
            return {name: saved[name] for name in saved.files}

    def on_done(self, finished: Finished) -> None:
        """Writes what ``finished`` produced."""
        job = finished.job
        if job.key.startswith("eval:"):
            # One config of one model: added to the model's record of its evaluations.
            path = self.study.path("lengthgen", f"{job.args[0].key}.json")
            record = json.loads(path.read_text()) if path.is_file() else {}
            reporting.write_json(path, {**record, **finished.outcome})
            for config in finished.outcome:  # only now: the record is safe
                snapshots.discard(self.study.path(INFLIGHT, tally_name(job.args[0], config)))
            return
        spec: RunSpec = job.args[0]
        result, params = finished.outcome
        if self.keep_params:
            save_params(params, self.study.path("models", f"{spec.key}.npz"))
        write_events(result, self.study.path("events", spec.key))
        self.study.save(spec.key, {"settings": dataclasses.asdict(spec), "result": dataclasses.asdict(result),
                                   "attempts": finished.attempts})
        snapshots.discard(self.study.path(INFLIGHT, spec.key))  # only now: the record is safe
        print(f"{spec.cell:<12} {spec.level:<10} lr {spec.lr:<6g} seed {spec.seed}: {result.outcome()}; test accuracy "
              f"{result.test_accuracy:.4f}, {result.wrong_of_2560} of 2560 wrong, {result.wall_time_s:.0f} s"
              + (f" (attempt {finished.attempts})" if finished.attempts > 1 else ""), flush=True)


def write_tables(out: Path, lrs_of: Callable[[str], Sequence[float]] | None = None
                 ) -> tuple[str, dict[str, dict[str, list[float]]], str]:
    """Writes the tables and plots of every saved run of the study in ``out`` (learning-rate columns from
    ``lrs_of(cell)`` for a grid); returns the table, the evaluations at length and the level they were trained on."""
    results = load_results(out)
    table, trained_on = saved_lengthgen(out)
    order = list(dict.fromkeys([*FAMILIES, *registry.names()]))
    table = {c: table[c] for c in sorted(table, key=lambda c: order.index(c) if c in order else len(order))}
    lrs = sorted({lr for c in {r.cell for r in results} for lr in lrs_of(c)}) if lrs_of else None
    return leaderboard.write(results, out, order, lrs, table, trained_on), table, trained_on


def replot(out: Path) -> int:
    """Rewrites the tables and plots of the study in ``out`` from its saved runs; trains nothing."""
    text, table, trained_on = write_tables(out)
    print(text)
    if table:
        print(leaderboard.lengthgen_table(table, trained_on))
    return 0


def run_grid(args: argparse.Namespace) -> int:
    """Runs the grid's runs not done yet in ``args.out`` and writes its tables; returns the exit code."""
    grid = Grid(args)
    with Study(args.out, KIND) as study:
        if getattr(args, "redo", None):
            redo(study, args.cells, args.levels, args.redo)
        done = results_of(study)
        pairs = grid.pairs()
        # Refused before anything trains: a run of the same key saved with other settings.
        defaults = {f.name: f.default for f in dataclasses.fields(RunSpec) if f.default is not dataclasses.MISSING}
        if args.protocol == "grid":
            study.check_runs({s.key: dataclasses.asdict(s) for c, lv in pairs for lr in grid.lrs(c)
                              for s in [*grid.selection_specs(c, lv), *grid.chosen_specs(c, lv, lr)]}, defaults)
        for level in dict.fromkeys(lv for _, lv in pairs):
            ensure_built(splits.SplitSpec.parse(level), args.data_dir)  # once, before the workers share it
            for config in grid.lengthgen_configs(level):
                ensure_built(splits.SplitSpec.parse(config), args.data_dir)
        evaluated = {p.stem: set(json.loads(p.read_text())) for p in study.path("lengthgen").glob("*.json")}
        driver = Driver(study, keep_params=any(grid.lengthgen_configs(lv) for _, lv in pairs), evaluated=evaluated)
        plans = [grid.plan(c, lv, done, args.data_dir, driver.set_aside, study.path(INFLIGHT)) for c, lv in pairs]
        if args.protocol == "tuned":  # the searches replayed from the saved runs: every run they know of
            study.check_runs({s.key: dataclasses.asdict(s) for plan in plans for s in plan.known_specs()}, defaults)
        # A model's evaluation at length goes before its pair's next runs: results arrive as early as they can.
        plans = [p for plan, (_, lv) in zip(plans, pairs) for p in (
            [LengthPlan(plan, grid.lengthgen_configs(lv), evaluated, driver.params_of, args.data_dir,
                        grid.eval_limit(), study.path(INFLIGHT))] if grid.lengthgen_configs(lv) else []) + [plan]]
        finished_before = sum(plan.finished_count() for plan in plans)
        if finished_before:
            print(f"{finished_before} tasks are done already in {study.out}.", flush=True)
        # Only this command's runs, told by their saved settings as --redo tells them: a snapshot of a cell left
        # out of --cells/--levels waits for its own command.
        saved = {p.name: snapshots.settings_of(p) or {} for p in study.path(INFLIGHT).glob("*") if p.is_dir()}
        resuming = sorted(name for name, settings in saved.items()
                          if (settings.get("cell"), settings.get("level")) in pairs)
        if resuming:
            print(f"{len(resuming)} run(s) or evaluation(s) stopped mid-way resume from their snapshots in "
                  f"{study.path(INFLIGHT)}: {', '.join(resuming)}", flush=True)
        with Pool(args.workers, args.address) as pool:
            print(f"Running the grid on {pool.capacity} worker(s).", flush=True)
            failed = pool.run(plans, driver.on_done, total=grid.total(), done_before=finished_before)
        out = study.out
    # The tables hold every saved run of the study, not only this command's cells and levels: a command on part
    # of a study (one level, another seed, a redo) does not write the rest out of its results and plots.
    text, table, trained_on = write_tables(out, grid.lrs if args.protocol == "grid" else None)
    print("\n" + text)
    if table:
        print(leaderboard.lengthgen_table(table, trained_on))
    print(f"Wrote results.json, results.csv, results.md, sequences_to_solve.png, learning_curves.png"
          f"{', lengthgen.md, lengthgen.png' if table else ''} and events/ (TensorBoard) to {out}")
    if failed:
        listed = "; ".join(f"{job.key}: {why}" for job, why in failed[:5])
        raise StudyError(f"{len(failed)} task(s) failed and were not saved ({listed}); fix the cause and run the "
                         f"same command again: it redoes only what is missing")
    return 0

