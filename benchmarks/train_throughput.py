"""Training throughput: our train step (as `python -m pipelines.train` runs it) vs PyTorch vs the seed notebook.

    python benchmarks/train_throughput.py [--levels hard nightmare] [--batch-sizes 32 256]
                                          [--cells lstm rnn gru transformer] [--seconds 3] [--no-seed]
                                          [--compare-threads] [--unrolls 1 16]

For each level, batch size and cell, side by side in one process: sequences per second of a full training
step (forward, backward, Adam update) and the first step's time (compilation included), for
- ours: `pipelines.steps.make_train_step`, the step the training pipeline uses (on one CPU device with its
  automatic gradient threads, column `thr`);
- torch: `nn.LSTM`/`nn.GRU`/`nn.RNN(relu)` + `nn.Linear` on one-hot inputs, Adam, in a child process
  (skipped if torch is absent); for the transformer, `nn.TransformerEncoder` (norm_first) at the same shape
  with a key padding mask and masked mean pooling (:func:`torch_transformer_step`);
- seed: the seed notebook's model (a Python loop over time steps) and un-jitted train step, a few steps only.
Batches are prepared before timing, so only the step is measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax
import numpy as np

from pipelines import experiment, steps
from pipelines.config import TrainConfig
from pipelines.sharding import Sharding
from qrsu_data import task
from qrsu_models import registry


def make_batches(level: task.Level, batch_size: int, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` pre-padded batches of real task sequences."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = task.generate(level, batch_size, rng)
        tokens = np.zeros((batch_size, level.max_length), np.int32)
        for i, seq in enumerate(b.sequences()):
            tokens[i, level.max_length - len(seq):] = seq
        out.append({"tokens": tokens, "lengths": b.lengths.astype(np.int32), "label": b.labels.astype(np.int32)})
    return out


def _timed(step, batches, seconds: float, sync=jax.block_until_ready) -> tuple[float, float]:
    """(first-step seconds, steady-state steps per second) of ``step`` over ``batches``, cycling."""
    t0 = time.perf_counter()
    step(batches[0], block=True)
    first = time.perf_counter() - t0
    step(batches[1], block=True)
    n, t0 = 0, time.perf_counter()
    while True:
        last = step(batches[n % len(batches)], block=False)
        n += 1
        if n % 10 == 0 and time.perf_counter() - t0 > seconds:
            break
    sync(last)
    return first, n / (time.perf_counter() - t0)


def ours(cell: str, level: str, batch_size: int, batches, seconds: float,
         grad_threads: int = 0, unroll: int = 0) -> tuple[float, float, int]:
    """Our train step, exactly as the training pipeline builds it; also returns its gradient threads."""
    sharding = Sharding.create()
    # Families torch has no counterpart of run at the experiment grid's size (mamba 48, mingru 72, ...); the
    # others stay at 64, torch's shape here.
    size = {} if cell in TORCH_CELLS else {"hidden": experiment.family(cell).hidden,
                                           "model_options": json.loads(experiment.family(cell).options_json())}
    config = TrainConfig(model=cell, difficulty=level, batch_size=batch_size, grad_threads=grad_threads,
                         unroll=unroll, **size)
    split, state = steps.init_state(steps.create_model(config), steps.create_tx(config), config, sharding)
    placed = [sharding.put_batch(b) for b in batches]
    holder = {"state": state}
    with steps.make_train_step(config, split, steps.create_tx(config), sharding) as train_step:

        def step(b, block):
            holder["state"], loss = train_step(holder["state"], b)
            return jax.block_until_ready(loss) if block else loss

        return (*_timed(step, placed, seconds), train_step.threads)


TORCH_CELLS = ("lstm", "gru", "rnn", "transformer")
"""The models PyTorch has a built-in counterpart of (nn.LSTM, nn.GRU, nn.RNN, nn.TransformerEncoder)."""


def torch_step(cell: str, level: task.Level, batch_size: int, batches, seconds: float):
    """PyTorch's built-in recurrent layer with the same shapes and optimizer (cuDNN's kernels on a GPU)."""
    import torch

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cell == "transformer":
        return torch_transformer_step(level, batches, seconds, device)
    layer = {"lstm": lambda: torch.nn.LSTM(8, 64, batch_first=True),
             "gru": lambda: torch.nn.GRU(8, 64, batch_first=True),
             "rnn": lambda: torch.nn.RNN(8, 64, nonlinearity="relu", batch_first=True)}[cell]()
    layer.to(device)
    head = torch.nn.Linear(64, level.num_classes).to(device)
    opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=1e-4)
    eye = torch.eye(8)
    prepared = []
    for b in batches:
        x = eye[torch.from_numpy(b["tokens"]).long()]
        x[torch.from_numpy(b["tokens"] == 0) & (torch.arange(level.max_length)[None, :] <
                                                 torch.from_numpy(level.max_length - b["lengths"])[:, None])] = 0
        prepared.append((x.to(device), torch.from_numpy(b["label"]).long().to(device)))

    def loss(b):
        x, y = b
        out, _ = layer(x)
        return torch.nn.functional.cross_entropy(head(out[:, -1]), y)

    return _timed_torch(loss, opt, prepared, seconds, device)


def _timed_torch(loss_fn, opt, prepared, seconds: float, device: str) -> tuple[float, float]:
    """_timed of a torch train step: ``loss_fn(batch)``, its backward pass and ``opt``'s update."""
    import torch

    def step(b, block):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(b)
        loss.backward()
        opt.step()
        if block and device == "cuda":
            torch.cuda.synchronize()
        return loss

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    return _timed(step, prepared, seconds, sync)


def torch_transformer_step(level: task.Level, batches, seconds: float, device: str):
    """torch's nn.TransformerEncoder at our default's shape: pre-LN, width 64, 2 layers, 4 heads, MLP 64, exact
    GELU, no dropout, a final LayerNorm, padded keys masked, masked mean pooling, Adam. Positions: sinusoidal,
    counted from each row's first real token (torch has no rotary encoding; ours uses rotary, a few more
    elementwise ops per layer)."""
    import torch

    from qrsu_models import transformer

    hidden = 64
    embed = torch.nn.Embedding(task.VOCAB_SIZE, hidden)
    layer = torch.nn.TransformerEncoderLayer(hidden, 4, dim_feedforward=hidden, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, norm=torch.nn.LayerNorm(hidden), enable_nested_tensor=False)
    head = torch.nn.Linear(hidden, level.num_classes)
    modules = torch.nn.ModuleList([embed, encoder, head]).to(device)
    opt = torch.optim.Adam(modules.parameters(), lr=1e-4)
    steps = level.max_length
    table = torch.from_numpy(np.asarray(transformer.sinusoidal(jax.numpy.arange(steps), hidden))).to(device)
    prepared = []
    for b in batches:
        pad = torch.arange(steps)[None, :] < torch.from_numpy(steps - b["lengths"])[:, None]  # pre-padded
        positions = (torch.cumsum((~pad).long(), dim=1) - 1).clamp(min=0)
        prepared.append((torch.from_numpy(b["tokens"]).long().to(device), pad.to(device), positions.to(device),
                         torch.from_numpy(b["label"]).long().to(device)))

    def loss(b):
        tokens, pad, positions, y = b
        h = encoder(embed(tokens) + table[positions], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1)
        return torch.nn.functional.cross_entropy(head(pooled), y)

    return _timed_torch(loss, opt, prepared, seconds, device)


def torch_in_child(cell: str, level: str, batch_size: int, seconds: float) -> tuple[float, float]:
    """torch_step measured in a fresh process: beside a live XLA thread pool, torch's threads spin against it
    on 2 cores and measure several times slower."""
    cmd = [sys.executable, __file__, "--torch-worker", f"{cell},{level},{batch_size},{seconds}"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    return out["first"], out["steps_per_s"]


def seed_step(cell: str, level: task.Level, batches, steps: int = 2) -> tuple[float, float]:
    """The seed notebook's SimpleLSTM/SimpleRNN, Python time loop, un-jitted step (as in its Langkah 3-4)."""
    import optax
    from flax import nnx

    class SeedModel(nnx.Module):
        # The notebook's SimpleRNN / SimpleLSTM, line for line.
        def __init__(self, rngs):
            self.cell = (nnx.LSTMCell if cell == "lstm" else nnx.SimpleCell)(8, 64, rngs=rngs)
            self.linear = nnx.Linear(64, level.num_classes, rngs=rngs)

        def __call__(self, x):
            b = x.shape[0]
            h = jax.numpy.zeros((b, 64))
            c = jax.numpy.zeros((b, 64))
            h_list = []
            for t in range(x.shape[1]):
                if cell == "lstm":
                    (h, c), h_out = self.cell((h, c), x[:, t, :])
                    h_list.append(h_out)
                else:
                    h, h_out = self.cell(h, x[:, t, :])
                    h = nnx.relu(h)
                    h_list.append(h)
            return self.linear(jax.numpy.stack(h_list, axis=1))

    model = SeedModel(nnx.Rngs(42))
    optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)
    xs = [(task.one_hot([t[t.size - n:] for t, n in zip(b["tokens"], b["lengths"])], level.max_length + 1),
           b["label"]) for b in batches]

    def step(b):
        x, y = b

        def loss_fn(m):
            logits = m(x)[:, -1, :]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return jax.block_until_ready(loss)

    t0 = time.perf_counter()
    step(xs[0])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        step(xs[(i + 1) % len(xs)])
    return first, steps / (time.perf_counter() - t0)


def main() -> None:
    """Runs every case and prints one table with ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", nargs="+", default=["hard", "nightmare"], choices=list(task.LEVELS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256])
    p.add_argument("--cells", nargs="+", default=["lstm", "rnn", "gru"], choices=list(registry.names()),
                   help="registered model names (PyTorch has a counterpart of lstm, rnn, gru and transformer only); "
                        "list lstm first for the ours/lstm column")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per case")
    p.add_argument("--no-seed", action="store_true", help="skip the (slow) seed-notebook formulation")
    p.add_argument("--compare-threads", action="store_true",
                   help="also time our step on one gradient thread and print the threads' gain")
    p.add_argument("--unrolls", nargs="+", type=int, default=[],
                   help="also time our step with each of these --unroll values (seq/s and first step)")
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_worker:
        cell, level_name, bs, seconds = args.torch_worker.split(",")
        level = task.get_level(level_name)
        first, rate = torch_step(cell, level, int(bs), make_batches(level, int(bs), 8), float(seconds))
        print(json.dumps({"first": first, "steps_per_s": rate}))
        return
    try:
        import torch

        have_torch = True
        torch_note = (f"torch {torch.__version__} on {torch.cuda.get_device_name()} (cuDNN)"
                      if torch.cuda.is_available() else
                      f"torch {torch.__version__} on cpu, {torch.get_num_threads()} threads")
    except ImportError:
        have_torch = False
        torch_note = "torch not installed: PyTorch columns skipped (pip install torch==2.13.0)"
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}; {torch_note}")
    header = (f"{'level':<10}{'batch':>6} {'cell':<12}{'thr':>4}{'ours seq/s':>12}{'first s':>9}{'torch seq/s':>13}"
              f"{'first s':>9}{'seed seq/s':>12}{'first s':>9}{'ours/torch':>12}{'ours/seed':>11}{'ours/lstm':>11}"
              + (f"{'1-thr seq/s':>13}{'thr gain':>12}" if args.compare_threads else "")
              + "".join(f"{f'u{u} seq/s':>12}{'first s':>9}" for u in args.unrolls))
    print(header)
    lstm_rate: dict[tuple[str, int], float] = {}  # our LSTM's rate per (level, batch), when it runs first
    for level_name in args.levels:
        level = task.get_level(level_name)
        for bs in args.batch_sizes:
            batches = make_batches(level, bs, 8)
            for cell in args.cells:
                of, ot, threads = ours(cell, level_name, bs, batches, args.seconds)
                with_torch = have_torch and cell in TORCH_CELLS
                tf_, tt = torch_in_child(cell, level_name, bs, args.seconds) if with_torch else (np.nan, np.nan)
                lstm_rate.setdefault((level_name, bs), ot if cell == "lstm" else np.nan)
                run_seed = not args.no_seed and bs == 32 and cell in ("lstm", "rnn")
                sf, st = seed_step(cell, level, batches) if run_seed else (np.nan, np.nan)
                extra = ""
                if args.compare_threads:
                    _, one, _ = ours(cell, level_name, bs, batches, args.seconds, grad_threads=1)
                    extra = f"{one * bs:>13,.0f}{ot / one:>12.2f}"
                for u in args.unrolls:
                    uf, ut, _ = ours(cell, level_name, bs, batches, args.seconds, unroll=u)
                    extra += f"{ut * bs:>12,.0f}{uf:>9.2f}"
                print(f"{level_name:<10}{bs:>6} {cell:<12}{threads:>4}{ot * bs:>12,.0f}{of:>9.2f}{tt * bs:>13,.0f}"
                      f"{tf_:>9.2f}{st * bs:>12,.0f}{sf:>9.2f}{ot / tt:>12.2f}{ot / st:>11.1f}"
                      f"{ot / lstm_rate[(level_name, bs)]:>11.2f}{extra}", flush=True)


if __name__ == "__main__":
    main()
