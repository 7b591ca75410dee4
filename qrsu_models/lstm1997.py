"""The LSTM of Hochreiter & Schmidhuber (1997) as Experiment 6 used it: memory-cell blocks, no forget gate.

The network (``/work/shared/REFERENCE.md``, "The 1997 protocol"):

* ``blocks`` memory-cell blocks of ``cells_per_block`` (2) cells; each block has ONE input gate and ONE output
  gate, shared by its cells. There is no forget gate (Gers et al. 2000 added it later).
* The hidden layer is fully recurrent: every cell and every gate has a net input ``w . [x(t), y(t-1), 1]``,
  where ``x(t)`` is the one-hot input and ``y(t-1)`` the previous activations of ALL cells and gates (0 at
  the start).
* Cell c of block b: ``s_c(t) = s_c(t-1) + y_in_b(t) g(net_c(t))`` (``s_c(0) = 0``) and
  ``y_c(t) = y_out_b(t) h(s_c(t))``, gates ``y_in = f(net_in)``, ``y_out = f(net_out)``, f the logistic
  sigmoid, ``g(x) = 4 f(x) - 2`` and ``h(x) = 2 f(x) - 1``.
* The output layer, ``num_classes`` logistic units, is fed by the cells only, plus a bias. ``__call__``
  returns the output units' net inputs as logits: ``sigmoid(logits)`` are the paper's outputs and
  ``argmax(logits)`` the class.

Weights: ``H (V + H + 1) + C (n + 1)`` with ``H = blocks (cells_per_block + 2)`` hidden units, ``n`` cells,
``V`` inputs and ``C`` outputs: 156 for Exp. 6a (2 blocks, 4 classes), 308 for Exp. 6b (3 blocks, 8 classes).

Parameters, a dict (the pure functions read the sizes off the shapes):
``w_x`` [V, H] (input -> hidden), ``w_y`` [H, H] (previous hidden -> hidden), ``b`` [H], ``w_o`` [n, C],
``b_o`` [C]. Hidden units are ordered by kind: the n cells (block-major: block b owns cells
``b*cpb .. b*cpb+cpb-1``), then the blocks' input gates, then their output gates.

Gradients (``gradient``):

* ``'truncated'`` (the paper's): errors arriving at the net inputs of cells and gates are not propagated
  further back in time; only inside a cell does error flow back, through the previous states ``s_c``. Here:
  ``stop_gradient(y(t-1))`` where ``y(t-1)`` enters a net input, so autodiff gives exactly that gradient
  (:func:`loss_and_grad`). :func:`truncated_loss_and_grad_rtrl` computes the same gradient the paper's own
  way, by carrying the partials ``ds_c/dw`` forward in time (no backward pass; see
  ``benchmarks/replicate_throughput.py`` for why it exists).
* ``'full'``: backpropagation through time through every path.

Variable lengths: input is read through :func:`qrsu_models.layout.right_aligned`; the 1997 net is not at
rest under zero input (its biases drive it), so padded steps are masked: they leave state and activations
unchanged, and a sequence's logits do not depend on its batch's padding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from qrsu_data import task
from qrsu_models import layout
from qrsu_models.arguments import check_choice as _check_choice

Params = dict[str, jax.Array]

GRADIENTS: tuple[str, ...] = ("truncated", "full")
"""'truncated': the paper's gradient (error flows back in time only through the cell states); 'full': BPTT."""
BIASED_GATES: tuple[str, ...] = ("input", "output")
"""Which gate of each block gets the paper's negative initial bias (the paper's Exp. 6 text: the input gate)."""
CELLS_PER_BLOCK = 2
"""Memory cells per block in Experiment 6."""
INIT_RANGE = 0.1
"""Every weight starts uniform in [-INIT_RANGE, INIT_RANGE] (then the gate biases are set)."""


def paper_gate_biases(blocks: int) -> tuple[float, ...]:
    """The paper's initial gate biases: -2 for the first block, -4 for the second, -6 for the third, ..."""
    return tuple(-2.0 * (b + 1) for b in range(blocks))


def default_blocks(num_classes: int) -> int:
    """Experiment 6's block count: 2 for 4 classes (6a), 3 for 8 classes (6b)."""
    return 2 if num_classes <= 4 else 3


def sizes(params: Params) -> tuple[int, int]:
    """(blocks, cells_per_block) of a parameter dict."""
    hidden_units, cells = params["w_y"].shape[0], params["w_o"].shape[0]
    blocks = (hidden_units - cells) // 2
    return blocks, cells // blocks


def num_weights(params: Params) -> int:
    """The number of weights (biases included)."""
    return sum(int(p.size) for p in jax.tree.leaves(params))


def _check_int(what: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def init_params(key: jax.Array, *, blocks: int, num_classes: int, vocab_size: int = task.VOCAB_SIZE,
                cells_per_block: int = CELLS_PER_BLOCK, gate_biases: tuple[float, ...] | None = None,
                biased_gate: str = "input", init_range: float = INIT_RANGE) -> Params:
    """The paper's initialisation: every weight uniform in [-init_range, init_range], then the gate biases."""
    _check_int("blocks", blocks)
    _check_int("num_classes", num_classes)
    _check_int("vocab_size", vocab_size)
    _check_int("cells_per_block", cells_per_block)
    _check_choice("biased_gate", biased_gate, BIASED_GATES)
    gate_biases = paper_gate_biases(blocks) if gate_biases is None else tuple(gate_biases)
    if len(gate_biases) != blocks:
        raise ValueError(f"gate_biases needs one value per block ({blocks}), got {gate_biases!r}")
    cells = blocks * cells_per_block
    hidden_units = cells + 2 * blocks
    shapes = {"w_x": (vocab_size, hidden_units), "w_y": (hidden_units, hidden_units), "b": (hidden_units,),
              "w_o": (cells, num_classes), "b_o": (num_classes,)}
    keys = jax.random.split(key, len(shapes))  # fixed draw order: the dict's order
    params = {name: jax.random.uniform(k, shape, jnp.float32, -init_range, init_range)
              for k, (name, shape) in zip(keys, shapes.items())}
    first_gate = cells if biased_gate == "input" else cells + blocks
    params["b"] = params["b"].at[first_gate:first_gate + blocks].set(jnp.asarray(gate_biases, jnp.float32))
    return params


def _sigmoid(x: jax.Array) -> jax.Array:
    # sigmoid(x) = 0.5 tanh(x/2) + 0.5: one transcendental, and XLA:CPU's tanh is faster than its logistic.
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


SQUASH = (2.0, 1.0)
"""The squashing functions' half-ranges (g, h): g(x) = 4 sigmoid(x) - 2 in [-2, 2] and h(x) = 2 sigmoid(x) - 1 in
[-1, 1], as the paper's text gives them; its Table 10 legend swaps them, (1.0, 2.0)."""
SQUASHES: dict[str, tuple[float, float]] = {"text": SQUASH, "table10": (1.0, 2.0)}
"""Readings of the paper for the ranges of g and h: 'text' (g in [-2, 2], h in [-1, 1]), 'table10' (swapped)."""


def _squashed(x: jax.Array, half_range: float) -> jax.Array:
    """2 a sigmoid(x) - a, range [-a, a]: the paper's g (a = 2 in its text) and h (a = 1)."""
    return 2.0 * half_range * _sigmoid(x) - half_range


def _activate(net: jax.Array, s: jax.Array, blocks: int, cpb: int,
              squash: tuple[float, float] = SQUASH) -> tuple[jax.Array, ...]:
    """One step's activations from its net inputs [..., H] and the previous cell states s [..., n]."""
    cells = blocks * cpb
    net_c, net_in, net_out = net[..., :cells], net[..., cells:cells + blocks], net[..., cells + blocks:]
    y_in, y_out = _sigmoid(net_in), _sigmoid(net_out)
    y_in_c, y_out_c = jnp.repeat(y_in, cpb, axis=-1), jnp.repeat(y_out, cpb, axis=-1)  # each cell's gates
    s_new = s + y_in_c * _squashed(net_c, squash[0])
    y_c = y_out_c * _squashed(s_new, squash[1])
    return jnp.concatenate([y_c, y_in, y_out], axis=-1), s_new, (net_c, y_in_c, y_out_c)


def _check_gradient(gradient: str) -> str:
    return _check_choice("gradient", gradient, GRADIENTS)


def final_state(params: Params, ids: jax.Array, mask: jax.Array, gradient: str = "truncated",
                squash: tuple[float, float] = SQUASH) -> tuple[jax.Array, jax.Array]:
    """(y [H], s [n]) after the last real step of one right-aligned sequence (ids, mask [T])."""
    _check_gradient(gradient)
    blocks, cpb = sizes(params)
    hidden_units, cells = params["w_y"].shape[0], blocks * cpb
    # [T, H]: the input and bias part of every net input. A one-hot product rather than a gather, so that an id
    # outside [0, V) is no input at all, in the forward pass and in the gradient alike.
    dtype = params["b"].dtype  # float32, or float64 for the replication's precision reading
    xproj = jax.nn.one_hot(ids, params["w_x"].shape[0], dtype=dtype) @ params["w_x"] + params["b"]

    def step(carry, inputs):
        y, s = carry
        xp, m = inputs
        # The truncation: no error flows back through y(t-1) where it enters a net input.
        y_prev = jax.lax.stop_gradient(y) if gradient == "truncated" else y
        y_new, s_new, _ = _activate(xp + y_prev @ params["w_y"], s, blocks, cpb, squash)
        # A padded step leaves everything as it was (the net is not at rest under zero input).
        return (jnp.where(m, y_new, y), jnp.where(m, s_new, s)), None

    init = (jnp.zeros((hidden_units,), dtype), jnp.zeros((cells,), dtype))
    (y, s), _ = jax.lax.scan(step, init, (xproj, mask))
    return y, s


def output_logits(params: Params, y: jax.Array) -> jax.Array:
    """The output units' net inputs [..., C] from hidden activations y [..., H] (the cells feed the outputs)."""
    cells = params["w_o"].shape[0]
    return y[..., :cells] @ params["w_o"] + params["b_o"]


def sequence_logits(params: Params, ids: jax.Array, mask: jax.Array, gradient: str = "truncated",
                    squash: tuple[float, float] = SQUASH) -> jax.Array:
    """Logits [C] of one right-aligned sequence (ids, mask [T])."""
    y, _ = final_state(params, ids, mask, gradient, squash)
    return output_logits(params, y)


def apply(params: Params, tokens: jax.Array, lengths: jax.Array, padding: str = "pre",
          gradient: str = "truncated", squash: tuple[float, float] = SQUASH) -> jax.Array:
    """Logits [B, C] of token ids [B, T] with ``lengths`` [B] real tokens per row."""
    layout.check_padding(padding)  # before jit, so that the error names the value
    _check_gradient(gradient)
    return _apply(params, jnp.asarray(tokens), jnp.asarray(lengths), padding, gradient, tuple(squash))


@functools.partial(jax.jit, static_argnames=("padding", "gradient", "squash"))
def _apply(params: Params, tokens: jax.Array, lengths: jax.Array, padding: str, gradient: str,
           squash: tuple[float, float] = SQUASH) -> jax.Array:
    # jitted so that eager calls compile once per shape; under an outer jit it is inlined.
    ids, mask = layout.right_aligned(tokens, lengths, padding)
    return jax.vmap(functools.partial(sequence_logits, params, gradient=gradient, squash=squash))(ids, mask)


def squared_error(logits: jax.Array, label: jax.Array) -> jax.Array:
    """The paper's error at the last step: 0.5 * sum over outputs of (sigmoid(logit) - 0/1 target)^2."""
    target = jax.nn.one_hot(label, logits.shape[-1], dtype=logits.dtype)
    return 0.5 * jnp.sum((jax.nn.sigmoid(logits) - target) ** 2, axis=-1)


def loss_and_grad(params: Params, ids: jax.Array, mask: jax.Array, loss_fn: Callable[[jax.Array], jax.Array],
                  gradient: str = "truncated", squash: tuple[float, float] = SQUASH
                  ) -> tuple[jax.Array, jax.Array, Params]:
    """(loss, logits [C], d loss / d params) of one sequence, by autodiff; ``loss_fn(logits) -> scalar``."""

    def f(p):
        logits = sequence_logits(p, ids, mask, gradient, squash)
        return loss_fn(logits), logits

    (loss, logits), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, logits, grads


def truncated_loss_and_grad_rtrl(params: Params, ids: jax.Array, mask: jax.Array,
                                 loss_fn: Callable[[jax.Array], jax.Array], squash: tuple[float, float] = SQUASH
                                 ) -> tuple[jax.Array, jax.Array, Params]:
    """The truncated gradient by forward-propagated partials ds_c/dw (the paper's own way): equals
    ``loss_and_grad(..., gradient='truncated')``.

    Under the truncation, s_c depends on the weights into cell c and into its block's input gate only, and
    only through sums over time: ``ds_c/dw_cm += y_in g'(net_c) z_m`` and ``ds_c/dw_in,m += g(net_c) f'(net_in)
    z_m`` with ``z = [x, y(t-1), 1]``. Carrying these 2 (V + H + 1) numbers per cell forward needs no
    backward pass and stores nothing per step; the output gates and the output layer get error at the last
    step only.
    """
    blocks, cpb = sizes(params)
    cells = blocks * cpb
    hidden_units, vocab = params["w_y"].shape[0], params["w_x"].shape[0]
    dtype = params["b"].dtype
    a_g, a_h = squash
    w = jnp.concatenate([params["w_x"], params["w_y"], params["b"][None]], axis=0)  # [Z, H], z @ w = net
    onehot = jax.nn.one_hot(ids, vocab, dtype=dtype)  # [T, V]

    def z_of(x, y):
        return jnp.concatenate([x, y, jnp.ones((1,), dtype)])

    def step(carry, inputs):
        y, s, p_c, p_in = carry
        x, m = inputs
        z = z_of(x, y)
        net = z @ w
        y_new, s_new, (net_c, y_in_c, _) = _activate(net, s, blocks, cpb, squash)
        sig_c = _sigmoid(net_c)
        dg = 2.0 * a_g * sig_c * (1.0 - sig_c)  # g'(net_c)
        d_c = y_in_c * dg  # ds_c / d net_c
        d_in = (2.0 * a_g * sig_c - a_g) * y_in_c * (1.0 - y_in_c)  # ds_c / d net_in of c's block
        p_c_new = p_c + d_c[:, None] * z[None, :]
        p_in_new = p_in + d_in[:, None] * z[None, :]
        keep = lambda new, old: jnp.where(m, new, old)  # noqa: E731 - a padded step changes nothing
        return (keep(y_new, y), keep(s_new, s), keep(p_c_new, p_c), keep(p_in_new, p_in)), None

    z_size = vocab + hidden_units + 1
    zeros = jnp.zeros((cells, z_size), dtype)
    init = (jnp.zeros((hidden_units,), dtype), jnp.zeros((cells,), dtype), zeros, zeros)
    # All steps but the last in the loop; the last (always real once right-aligned, when the length is >= 1)
    # is unrolled below because the output gates need its z.
    (y_prev, s_prev, p_c, p_in), _ = jax.lax.scan(step, init, (onehot[:-1], mask[:-1]))
    (y, s, p_c, p_in), _ = step((y_prev, s_prev, p_c, p_in), (onehot[-1], mask[-1]))
    z_last = z_of(onehot[-1], y_prev)

    y_c, y_out = y[:cells], y[cells + blocks:]
    logits = y_c @ params["w_o"] + params["b_o"]
    loss, dlogits = jax.value_and_grad(loss_fn)(logits)
    e_c = params["w_o"] @ dlogits  # dE / dy_c(T)
    y_out_c = jnp.repeat(y_out, cpb)
    sig_s = _sigmoid(s)
    h_s = 2.0 * a_h * sig_s - a_h
    ds = e_c * y_out_c * 2.0 * a_h * sig_s * (1.0 - sig_s)  # dE / ds_c(T)
    d_out = (e_c * h_s).reshape(blocks, cpb).sum(1) * y_out * (1.0 - y_out)  # dE / d net_out(T)
    g_cells = (ds[:, None] * p_c).T  # [Z, n]
    g_in = (ds[:, None] * p_in).reshape(blocks, cpb, z_size).sum(1).T  # [Z, blocks]
    g_out = z_last[:, None] * d_out[None, :]  # [Z, blocks]
    g_w = jnp.concatenate([g_cells, g_in, g_out], axis=1)
    grads = {"w_x": g_w[:vocab], "w_y": g_w[vocab:vocab + hidden_units], "b": g_w[-1],
             "w_o": jnp.outer(y_c, dlogits), "b_o": dlogits}
    return loss, logits, grads


class LSTM1997(nnx.Module):
    """Token ids [B, T] + lengths [B] -> logits [B, num_classes] through the 1997 LSTM (Experiment 6).

    ``hidden`` is the number of memory cells (the units that carry the state and feed the outputs, like an
    LSTM's hidden units), a multiple of ``cells_per_block``; by default 2 blocks of 2 cells for 4 classes
    (Exp. 6a, 156 weights) and 3 blocks for 8 classes (Exp. 6b, 308 weights). ``gate_biases`` (default the
    paper's -2, -4, -6, ...) go to each block's ``biased_gate``; ``gradient`` is what autodiff of
    ``__call__`` computes ('truncated', the paper's, or 'full').
    """

    def __init__(self, *, num_classes: int = 4, vocab_size: int = task.VOCAB_SIZE, hidden: int | None = None,
                 cells_per_block: int = CELLS_PER_BLOCK, gate_biases: tuple[float, ...] | None = None,
                 biased_gate: str = "input", gradient: str = "truncated", rngs: nnx.Rngs):
        _check_int("num_classes", num_classes)
        _check_int("cells_per_block", cells_per_block)
        if hidden is None:
            hidden = default_blocks(num_classes) * cells_per_block
        _check_int("hidden", hidden)
        if hidden % cells_per_block:
            raise ValueError(f"hidden (memory cells) must be a multiple of cells_per_block={cells_per_block}, "
                             f"got {hidden!r}; e.g. {cells_per_block * default_blocks(num_classes)}")
        self.gradient = _check_gradient(gradient)
        self.num_classes, self.vocab_size, self.hidden = num_classes, vocab_size, hidden
        self.blocks, self.cells_per_block = hidden // cells_per_block, cells_per_block
        params = init_params(rngs.params(), blocks=self.blocks, num_classes=num_classes, vocab_size=vocab_size,
                             cells_per_block=cells_per_block, gate_biases=gate_biases, biased_gate=biased_gate)
        self.w_x, self.w_y, self.b = nnx.Param(params["w_x"]), nnx.Param(params["w_y"]), nnx.Param(params["b"])
        self.w_o, self.b_o = nnx.Param(params["w_o"]), nnx.Param(params["b_o"])

    def params(self) -> Params:
        """The weights as the dict the pure functions of this module take."""
        return {name: getattr(self, name)[...] for name in ("w_x", "w_y", "b", "w_o", "b_o")}

    def __call__(self, tokens: jax.Array, lengths: jax.Array, padding: str = "pre") -> jax.Array:
        """Logits float32 [B, num_classes]: the output units' net inputs after each row's last real token.

        A real position holding an id outside [0, vocab_size) is no input (a one-hot of nothing)."""
        layout.check_padding(padding)
        return apply(self.params(), tokens, lengths, padding, self.gradient)

    def state_size(self, length: int) -> int:
        """Floats carried from step to step: every cell's and gate's activation and every cell state."""
        return self.blocks * (self.cells_per_block + 2) + self.hidden
