"""Every model family on every level, one protocol: ``python -m pipelines.experiment --help``.

The protocol (docs/leaderboard.md): each family at its stated size; per (family, level) a grid of learning
rates tried on seed 0, the best chosen on validation (pipelines.leaderboard), then the other seeds at it; batch
16, gradients clipped at norm 1, a budget of training sequences per level of at least 4x what the LSTM needs;
each run stops when solved on validation (at most 1% wrong) and reports its test accuracy (pipelines.solving).
The models trained on ``hard`` are then evaluated on the length-generalisation suite (``hard-len200`` to
``hard-len5000``). Every run is saved as it ends, so the grid resumes where it stopped, and the tables and
plots are rebuilt from every saved run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import tqdm

from pipelines import cli, leaderboard, reporting
from pipelines.evaluator import Evaluator
from pipelines.sharding import Sharding
from pipelines.solving import RunResult, RunSpec, load_params, run_one
from qrsu_data import catalog, store, task
from qrsu_models import registry


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family as the experiment trains it: its size, its learning-rate grid, its initialisation."""

    name: str
    hidden: int
    lrs: tuple[float, ...]
    init: str
    options: tuple[tuple[str, object], ...] = ()

    def options_json(self) -> str:
        """The family's model options beyond its width, as RunSpec stores them."""
        return json.dumps(dict(self.options), sort_keys=True)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("lstm", 64, (1e-3, 2e-3, 4e-3), "chrono gate biases (Tallec & Ollivier 2018), orthogonal recurrent "
           "kernels"),
    Family("gru", 80, (1e-3, 2e-3, 4e-3), "flax's: lecun-normal input, orthogonal recurrent, zero biases"),
    Family("rnn", 136, (1e-3, 2e-3, 4e-3), "flax's SimpleCell: lecun-normal input, orthogonal recurrent"),
    Family("lru", 64, (1e-3, 3e-3, 1e-2), "the paper's: |lambda| uniform on the ring [0.9, 0.999], phases in "
           "[0, pi], gamma = sqrt(1 - |lambda|^2), B and C complex Glorot-scaled"),
    Family("mingru", 72, (1e-3, 3e-3, 1e-2), "flax's Linear defaults (lecun-normal, zero biases)"),
    Family("minlstm", 64, (1e-3, 3e-3, 1e-2), "flax's Linear defaults (lecun-normal, zero biases)"),
    Family("mamba", 48, (1e-3, 3e-3, 1e-2), "the paper's: A_n = -(n+1) (S4D-real), Delta log-uniform in "
           "[0.001, 0.1], D = 1"),
    Family("transformer", 64, (5e-4, 1e-3, 2e-3), "flax's Linear and Embed defaults, LayerNorm at 1 and 0; "
           "rotary positions, nothing learned about position"),
)}
"""The families of the default grid, each at about 20k-60k parameters (the LSTM at hidden 64 has 18,948)."""

BUDGETS = {"easy": 8_000, "normal": 16_000, "moderate": 20_000, "hard": 20_000, "nightmare": 66_000,
           "exp6b": 48_000}
"""Training sequences a run may use, per level: at least 4x the LSTM's median to solve it (1,280 on easy,
3,200 normal, 4,160 moderate, 3,840 hard, 16,320 nightmare, 10,880 exp6b), so "not solved" means something."""
SLOW_CELLS = {("mamba", "nightmare"), ("transformer", "nightmare")}
"""(family, level) pairs the grid leaves out unless --slow-cells is given: on the 2-core CPU each would take
1-2 hours of its 5 runs (at length 500 a Mamba step costs ~10x, a Transformer step ~30x our LSTM's)."""
CHECK_EVERY = {"easy": 320, "normal": 320, "moderate": 320, "hard": 320, "nightmare": 1920, "exp6b": 640}
"""Training sequences between two validation checks, per level (a nightmare check costs 5x a hard one)."""
LENGTHGEN_LENGTHS = (200, 500, 1000, 2000, 5000)
"""Longest sequences of the suite's scaled configs that models trained on hard are evaluated on."""
LENGTHGEN_LIMIT = 1024
"""Test sequences evaluated per suite config (a Transformer's attention at length 5,000 is costly on a CPU)."""
QUICK = {"cells": ["lstm", "gru"], "levels": ["easy"], "budget": 3200, "check_every": 320,
         "lengthgen_level": "easy", "lengthgen_lengths": [16, 32]}
"""--quick: the same protocol on two families and the easy level, for the tests."""


class ExperimentError(cli.CommandError):
    """An output folder that cannot take this grid's results; the message says why."""


def check_out(out: Path) -> Path:
    """``out`` made and writable, before anything trains; ExperimentError otherwise."""
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out} is a file, not a folder; give a folder for the results")
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ExperimentError(f"cannot write the results into --out {out}: {e.strerror or e}") from None
    return out


def saved_runs(out: Path) -> dict[str, tuple[dict, RunResult]]:
    """The finished runs in ``out``/runs, by key: (their settings, their result)."""
    found = {}
    for path in sorted((out / "runs").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            result = RunResult(**{**record["result"], "curve": [tuple(p) for p in record["result"]["curve"]]})
            found[path.stem] = (record["settings"], result)
        except (ValueError, TypeError, KeyError) as e:
            raise ExperimentError(f"{path} is not a finished run of this experiment ({type(e).__name__}: {e}); "
                                  f"move it away and run again (the run is then redone)") from None
    return found


def saved_lengthgen(out: Path) -> tuple[dict[str, dict[str, list[float]]], str]:
    """(family -> suite config -> accuracies by seed, the level trained on) of every evaluation in ``out``/lengthgen."""
    table: dict[str, dict[str, list[float]]] = {}
    levels = set()
    # Every saved run with an evaluation, by family and seed (an evaluation whose run was moved away is ignored).
    for key, (_, result) in sorted(saved_runs(out).items(), key=lambda item: (item[1][1].cell, item[1][1].seed)):
        path = out / "lengthgen" / f"{key}.json"
        if not path.is_file():
            continue
        levels.add(result.level)
        for config, accuracy in json.loads(path.read_text()).items():
            table.setdefault(result.cell, {}).setdefault(config, []).append(accuracy)
    return table, ", ".join(sorted(levels))


def check_settings(specs: list[RunSpec], out: Path) -> None:
    """ExperimentError if ``out`` holds a run of one of ``specs``'s keys with other settings."""
    saved = saved_runs(out)
    conflicts = []
    for spec in specs:
        if spec.key in saved:
            settings = saved[spec.key][0]
            diffs = {k: (settings.get(k), v) for k, v in dataclasses.asdict(spec).items() if settings.get(k) != v}
            if diffs:
                listed = ", ".join(f"{k}: saved {a!r}, asked {b!r}" for k, (a, b) in diffs.items())
                conflicts.append(f"{spec.key} ({listed})")
    if conflicts:
        raise ExperimentError(f"{out} holds runs of other settings: {'; '.join(conflicts[:5])}"
                              f"{' ...' if len(conflicts) > 5 else ''}. Rerun with the saved settings to extend "
                              f"the grid, or choose another --out")


def save_run(spec: RunSpec, result: RunResult, out: Path) -> None:
    """Writes one finished run into ``out``/runs, atomically."""
    reporting.write_json(out / "runs" / f"{spec.key}.json",
                         {"settings": dataclasses.asdict(spec), "result": dataclasses.asdict(result)})


def load_results(out: Path) -> list[RunResult]:
    """Every finished run saved in ``out`` (its runs/ folder, or a results.json of an earlier version)."""
    if (out / "runs").is_dir():
        return [result for _, result in saved_runs(out).values()]
    path = out / "results.json"
    try:
        rows = json.loads(path.read_text())
        return [RunResult(**{**row, "curve": [tuple(point) for point in row["curve"]]}) for row in rows]
    except FileNotFoundError:
        raise ExperimentError(f"{path} does not exist: give the --out folder of an earlier experiment") from None
    except (ValueError, TypeError, KeyError) as e:
        raise ExperimentError(f"{path} is not an experiment's results.json ({e})") from None


def family(name: str) -> Family:
    """The family settings of ``name`` (a model of your own gets the LSTM's learning rates and hidden 64)."""
    registry.get(name)  # ValueError naming the valid models
    return FAMILIES.get(name, Family(name, 64, FAMILIES["lstm"].lrs, "the model's own"))


class Grid:
    """The experiment's runs: which to do, in which order, with the chosen learning rates between stages."""

    def __init__(self, args: argparse.Namespace, out: Path):
        self.args, self.out = args, out

    def spec(self, cell: str, level: str, lr: float, seed: int) -> RunSpec:
        """The run of ``cell`` on ``level`` at ``lr`` from ``seed``."""
        f = family(cell)
        return RunSpec(cell, level, seed, budget=self.args.budget or BUDGETS.get(level, 20_000),
                       check_every=self.args.check_every or CHECK_EVERY.get(level, 320),
                       batch_size=self.args.batch_size, lr=lr, clip_norm=self.args.clip_norm,
                       hidden=self.args.hidden or f.hidden, grad_threads=self.args.grad_threads,
                       model_options=f.options_json())

    def lrs(self, cell: str) -> tuple[float, ...]:
        """The learning rates tried for ``cell``: --lrs, else its family's grid."""
        return tuple(self.args.lrs) if self.args.lrs else family(cell).lrs

    def selection_specs(self, cell: str, level: str) -> list[RunSpec]:
        """Stage 1: every learning rate on the selection seeds."""
        return [self.spec(cell, level, lr, seed) for lr in self.lrs(cell)
                for seed in self.args.seeds[:self.args.lr_seeds]]

    def chosen_specs(self, cell: str, level: str, lr: float) -> list[RunSpec]:
        """Stage 2: the other seeds at the chosen learning rate."""
        return [self.spec(cell, level, lr, seed) for seed in self.args.seeds[self.args.lr_seeds:]]

    def pairs(self) -> list[tuple[str, str]]:
        """The (family, level) pairs to run, level by level: every one asked for, less SLOW_CELLS by default."""
        return [(c, lv) for lv in self.args.levels for c in self.args.cells
                if self.args.slow_cells or (c, lv) not in SLOW_CELLS]

    def total(self) -> int:
        """How many runs the grid holds."""
        seeds = self.args.seeds
        return sum(len(self.lrs(c)) * len(seeds[:self.args.lr_seeds]) + len(seeds[self.args.lr_seeds:])
                   for c, _ in self.pairs())


def _run(spec: RunSpec, out: Path, data_dir, done: dict[str, RunResult], bar: tqdm.tqdm, params: bool) -> RunResult:
    if spec.key in done:
        return done[spec.key]
    bar.set_postfix_str(spec.key)
    result = run_one(spec, data_dir, events_dir=out / "events" / spec.key,
                     params_path=out / "models" / f"{spec.key}.npz" if params else None)
    save_run(spec, result, out)
    done[spec.key] = result
    outcome = f"solved after {result.sequences_to_solve:,} sequences" if result.solved else "not solved"
    tqdm.tqdm.write(f"{spec.cell:<12} {spec.level:<10} lr {spec.lr:<6g} seed {spec.seed}: {outcome}; test accuracy "
                    f"{result.test_accuracy:.4f}, {result.wrong_of_2560} of 2560 wrong, {result.wall_time_s:.0f} s")
    bar.update(1)
    return result


def lengthgen(grid: Grid, chosen: dict[tuple[str, str], float], out: Path, data_dir) -> dict[str, dict[str, list]]:
    """Test accuracy of the models trained on the length-generalisation level, on its scaled suite configs."""
    level, lengths = grid.args.lengthgen_level, grid.args.lengthgen_lengths
    configs = [f"{level}-len{n}" for n in lengths]
    table: dict[str, dict[str, list[float]]] = {}
    sharding = Sharding.create()
    for cell in grid.args.cells:
        if (cell, level) not in chosen:
            continue
        for seed in grid.args.seeds:
            spec = grid.spec(cell, level, chosen[(cell, level)], seed)
            path = out / "lengthgen" / f"{spec.key}.json"
            if path.exists():
                record = json.loads(path.read_text())
            else:
                split, params = load_params(spec, out / "models" / f"{spec.key}.npz", data_dir)
                record = {}
                for config in configs:
                    store.build(config, data_dir)
                    # Batches of at most ~1M tokens: the Transformer's attention grows with the square of length.
                    batch = max(sharding.num_devices, min(1024, 1_000_000 // catalog.max_length(config)))
                    batch -= batch % sharding.num_devices
                    record[config] = Evaluator(split, sharding, batch).evaluate(
                        params, config, "test", data_dir=data_dir, limit=LENGTHGEN_LIMIT)["accuracy"]
                reporting.write_json(path, record)
            for config in configs:
                table.setdefault(cell, {}).setdefault(config, []).append(record[config])
    return table


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="python -m pipelines.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=list(FAMILIES), metavar="MODEL",
                   help=f"families to compare: any of {', '.join(registry.names())}, or package.module:Class "
                        f"(default: {' '.join(FAMILIES)})")
    p.add_argument("--levels", nargs="+", default=list(task.LEVELS), metavar="CONFIG",
                   help=f"dataset configs (default: {' '.join(task.LEVELS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--lr-seeds", type=int, default=1,
                   help="how many of the first --seeds try every learning rate (the others run at the chosen one)")
    p.add_argument("--lrs", nargs="+", type=float, default=None,
                   help="learning rates to try (default: each family's grid, e.g. 1e-3 2e-3 4e-3 for the LSTM)")
    p.add_argument("--budget", type=int, default=None, help="training sequences per run (default: per level, "
                   + ", ".join(f"{k} {v:,}" for k, v in BUDGETS.items()) + ")")
    p.add_argument("--check-every", type=int, default=None, help="training sequences between validation checks "
                   "(default: per level, " + ", ".join(f"{k} {v:,}" for k, v in CHECK_EVERY.items()) + ")")
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--hidden", type=int, default=None, help="width of every family (default: each family's)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="batch size; 16, not the training default 32: with more updates per sequence, fewer "
                        "training sequences solve a level (hard, Adam 3e-3: a median 3,840 at batch 16, "
                        "5,440 at 32)")
    p.add_argument("--grad-threads", type=int, default=2,
                   help="CPU gradient threads (see pipelines.train --help); pinned, not automatic, because the "
                        "thread count sets the order of a float sum, so results repeat only at the same count")
    p.add_argument("--lengthgen-level", default="hard", help="the level whose models are evaluated on longer "
                   "sequences (default: hard)")
    p.add_argument("--lengthgen-lengths", nargs="*", type=int, default=list(LENGTHGEN_LENGTHS),
                   help="longest sequences of the scaled configs evaluated (none: skip)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="results/experiment",
                   help="output folder; each finished run is saved in OUT/runs as it ends, and a rerun into the "
                        "same folder skips the runs done with the same settings")
    p.add_argument("--slow-cells", action="store_true",
                   help=f"also run {', '.join(f'{c} on {lv}' for c, lv in sorted(SLOW_CELLS))}, left out by "
                        f"default: hours each on a 2-core CPU")
    p.add_argument("--quick", action="store_true", help="the same protocol, small: lstm and gru on easy")
    p.add_argument("--replot", metavar="DIR", help="train nothing: rewrite the tables and plots of DIR's runs")
    return p


def _validate(args: argparse.Namespace) -> None:
    for cell in args.cells:
        registry.get(cell)  # ValueError naming the valid models
    for i, level in enumerate(args.levels):
        args.levels[i] = store.check_config(level)  # ValueError naming the valid configs
    for name in ("budget", "check_every", "batch_size", "hidden"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if any(seed < 0 for seed in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct integers >= 0, got {args.seeds}")
    if not 1 <= args.lr_seeds <= len(args.seeds):
        raise ValueError(f"--lr-seeds must lie in 1..{len(args.seeds)} (the number of --seeds), got {args.lr_seeds}")
    for lr in args.lrs or []:
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"--lrs must be positive numbers, got {lr}")
    if not (0 <= args.clip_norm and math.isfinite(args.clip_norm)):
        raise ValueError(f"--clip-norm must be >= 0 (0 disables clipping), got {args.clip_norm}")
    if args.grad_threads < 1 or args.batch_size % args.grad_threads:
        raise ValueError(f"--grad-threads must be >= 1 and divide --batch-size {args.batch_size}, "
                         f"got {args.grad_threads}")
    if args.lengthgen_lengths:
        for n in args.lengthgen_lengths:
            store.check_config(f"{args.lengthgen_level}-len{n}")  # ValueError for an impossible length
    if args.data_dir is not None:
        store.resolve_data_dir(args.data_dir)


def main(argv: list[str] | None = None) -> int:
    """Runs the grid (the runs not done yet) and writes its results."""
    args = parser().parse_args(argv)

    def go() -> int:
        if args.replot:
            out = Path(args.replot)
            table, trained_on = saved_lengthgen(out)
            order = list(dict.fromkeys([*FAMILIES, *registry.names()]))
            table = {c: table[c] for c in sorted(table, key=lambda c: order.index(c) if c in order else len(order))}
            print(leaderboard.write(load_results(out), out, order, None, table, trained_on))
            if table:
                print(leaderboard.lengthgen_table(table, trained_on))
            return 0
        if args.quick:  # its settings, except those given on the command line
            defaults = parser().parse_args([])
            for key, value in QUICK.items():
                if getattr(args, key) == getattr(defaults, key):
                    setattr(args, key, value)
        _validate(args)
        out = check_out(Path(args.out))
        grid = Grid(args, out)
        done = {key: result for key, (_, result) in saved_runs(out).items()}
        chosen: dict[tuple[str, str], float] = {}
        if done:
            print(f"{len(done)} runs are done already in {out}.", flush=True)
        with tqdm.tqdm(total=grid.total(), desc="runs", unit="run", dynamic_ncols=True) as bar:
            pairs = grid.pairs()
            bar.update(sum(1 for c, lv in pairs for s in grid.selection_specs(c, lv) if s.key in done))
            skipped = [f"{c} on {lv}" for lv in args.levels for c in args.cells if (c, lv) not in pairs]
            if skipped:
                print(f"Left out (hours on a CPU; --slow-cells runs them): {', '.join(skipped)}", flush=True)
            for cell, level in pairs:
                params = bool(args.lengthgen_lengths) and level == args.lengthgen_level
                stage1 = grid.selection_specs(cell, level)
                check_settings(stage1, out)
                results = [_run(s, out, args.data_dir, done, bar, params) for s in stage1]
                lr = leaderboard.select(results)[(cell, level)].lr
                chosen[(cell, level)] = lr
                stage2 = grid.chosen_specs(cell, level, lr)
                check_settings(stage2, out)
                bar.update(sum(1 for s in stage2 if s.key in done))
                for s in stage2:
                    _run(s, out, args.data_dir, done, bar, params)
        table = {}
        if args.lengthgen_lengths and args.lengthgen_level in args.levels:
            table = lengthgen(grid, chosen, out, args.data_dir)
        results = [r for r in load_results(out) if r.cell in args.cells and r.level in args.levels]
        lrs = sorted({lr for c in args.cells for lr in grid.lrs(c)})
        print("\n" + leaderboard.write(results, out, args.cells, lrs, table, args.lengthgen_level))
        if table:
            print(leaderboard.lengthgen_table(table, args.lengthgen_level))
        print(f"Wrote results.json, results.csv, results.md, sequences_to_solve.png, learning_curves.png"
              f"{', lengthgen.md, lengthgen.png' if table else ''} and events/ (TensorBoard) to {out}")
        return 0

    return cli.guarded(go)


if __name__ == "__main__":
    sys.exit(main())
