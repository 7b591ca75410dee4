"""Named sequence models: one registry that training, evaluation, prediction and checkpoints look models up in.

Every model meets one interface: a Flax NNX module built as ``Model(*, num_classes, vocab_size, rngs,
**options)`` whose ``__call__(tokens [B, T], lengths [B], padding="pre")`` returns logits [B, num_classes],
exact under padding (a sequence's logits do not depend on its batch's padding), and whose
``state_size(length)`` gives the floats it carries per sequence from step to step.

A model is named either by its registered name (:func:`names`) or, for a model of the user's own, by
``"package.module:Class"``: any class with that constructor and call signature, trained, checkpointed,
evaluated and predicted like a built-in. Options are the constructor's keyword arguments; ``max_length``
(the longest sequence of the training data) is passed to constructors that take it, e.g. for chrono
initialisation.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from qrsu_data import task
from qrsu_models import classifier, lstm1997

CONTEXT_ARGS = ("num_classes", "vocab_size", "max_length", "rngs")
"""Constructor arguments the registry supplies itself; every other keyword argument is an option."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A named model: its constructor, the options it takes with their defaults, and where it comes from."""

    name: str
    constructor: Callable[..., nnx.Module]
    description: str = ""
    reference: str = ""
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    """Options set here rather than by the constructor's own defaults (e.g. the recurrent cell)."""

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The constructor's parameters (of ``__init__`` for a class: NNX's metaclass hides the class's own)."""
        if inspect.isclass(self.constructor):
            return dict(list(inspect.signature(self.constructor.__init__).parameters.items())[1:])
        return dict(inspect.signature(self.constructor).parameters)

    def options(self) -> dict[str, Any]:
        """Every option the constructor takes, with its default (``inspect.Parameter.empty`` if required)."""
        params = self.parameters()
        out = {k: p.default for k, p in params.items()
               if k not in CONTEXT_ARGS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        return {**out, **{k: v for k, v in self.defaults.items() if k in out}}

    def build(self, *, num_classes: int, max_length: int, seed: int, options: dict[str, Any] | None = None,
              vocab_size: int = task.VOCAB_SIZE) -> nnx.Module:
        """The model with ``options`` (validated against the constructor), initialised from ``seed``."""
        options = dict(options or {})
        valid = self.options()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"model {self.name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                             f"{', '.join(valid) or 'none'}")
        kwargs = {**{k: v for k, v in self.defaults.items() if k in valid}, **options}
        params = self.parameters()
        context = {"num_classes": num_classes, "vocab_size": vocab_size, "max_length": max_length,
                   "rngs": nnx.Rngs(seed)}
        kwargs.update({k: v for k, v in context.items() if k in params})
        model = self.constructor(**kwargs)
        if not isinstance(model, nnx.Module):
            raise TypeError(f"model {self.name!r} built a {type(model).__name__}, not a flax.nnx.Module")
        return model


    def supports(self, method: str) -> bool:
        """Whether the model has ``method`` (e.g. ``forward_state``: its state can be set; ``regularizer``)."""
        return method in _methods(self)


@functools.lru_cache(maxsize=64)
def _methods(spec: ModelSpec) -> frozenset[str]:
    # The built model's public attributes, from an abstract build (no array is made).
    model = nnx.eval_shape(lambda: spec.build(num_classes=4, max_length=8, seed=0))
    return frozenset(name for name in dir(model) if not name.startswith("_"))


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Adds ``spec`` under its name; ValueError if the name is taken."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a model named {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> tuple[str, ...]:
    """The registered model names, in registration order."""
    return tuple(_REGISTRY)


def with_method(method: str) -> tuple[str, ...]:
    """The registered models that have ``method`` (see ModelSpec.supports)."""
    return tuple(name for name, spec in _REGISTRY.items() if spec.supports(method))


def get(name: str) -> ModelSpec:
    """The spec of a registered name or of ``"package.module:Class"``; ValueError naming the valid choices."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    if isinstance(name, str) and ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            constructor = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load model {name!r}: {type(e).__name__}: {e}. A model of your own is named "
                             f"'package.module:Class', importable from the current folder or the path") from None
        if not callable(constructor):
            raise ValueError(f"model {name!r} is not a class or a function")
        return ModelSpec(name, constructor, description=(inspect.getdoc(constructor) or "").split("\n")[0])
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}, or a model of your own as "
                     f"'package.module:Class'")


def parameter_count(model: nnx.Module) -> int:
    """How many trainable floats the model holds (complex parameters count twice)."""
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return int(sum(math.prod(x.shape) * (2 if np.iscomplexobj(x) else 1) for x in leaves))


def state_size(model: nnx.Module, length: int) -> int | None:
    """Floats the model carries per sequence from step to step at ``length`` (None if it does not say)."""
    method = getattr(model, "state_size", None)
    return None if method is None else int(method(length))


def _recurrent_classifier(cell: str) -> Callable[..., nnx.Module]:
    def build(*, num_classes: int, vocab_size: int, max_length: int, rngs: nnx.Rngs, hidden: int = 64,
              lstm_init: str = "chrono" if cell == "lstm" else "default", unroll: int = 1) -> nnx.Module:
        # Chrono initialisation spreads the forget gates' time scales up to the data's sequence length
        # (the seed's padded length, max_length + 1).
        return classifier.SequenceClassifier(cell, hidden=hidden, num_classes=num_classes, vocab_size=vocab_size,
                                             lstm_init=lstm_init, chrono_max=max_length + 1, unroll=unroll,
                                             rngs=rngs)

    build.__name__ = f"{cell}_classifier"
    return build


register(ModelSpec("rnn", _recurrent_classifier("rnn"), "the seed notebook's SimpleRNN: tanh cell, then ReLU",
                   "Elman 1990; the seed notebook"))
register(ModelSpec("lstm", _recurrent_classifier("lstm"), "LSTM with forget gate (flax LSTMCell), chrono biases",
                   "Hochreiter & Schmidhuber 1997; Gers et al. 2000; Tallec & Ollivier 2018"))
register(ModelSpec("gru", _recurrent_classifier("gru"), "GRU (flax GRUCell)", "Cho et al. 2014"))


def _lstm1997(*, num_classes: int, vocab_size: int, rngs: nnx.Rngs, cells: int | None = None,
              gate_biases: tuple[float, ...] | None = None, biased_gate: str = "input",
              gradient: str = "truncated") -> nnx.Module:
    # The paper's size by default (2 blocks of 2 cells for 4 classes, 3 for 8): its width is an option of its
    # own, not --hidden, whose default of 64 would make 32 blocks.
    return lstm1997.LSTM1997(num_classes=num_classes, vocab_size=vocab_size, hidden=cells, gate_biases=gate_biases,
                             biased_gate=biased_gate, gradient=gradient, rngs=rngs)


register(ModelSpec("lstm1997", _lstm1997, "the 1997 LSTM: blocks of 2 cells sharing input and output gates, no "
                   "forget gate, truncated gradient (docs/replication.md)", "Hochreiter & Schmidhuber 1997"))


def _family(cls: type, **fixed: Any) -> Callable[..., nnx.Module]:
    # The class's own keyword options, with the cell (for minRNN) fixed: the registry reads the signature.
    def build(**kwargs: Any) -> nnx.Module:
        return cls(**fixed, **kwargs)

    build.__signature__ = inspect.signature(cls.__init__).replace(
        parameters=[p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self" and n not in fixed])
    build.__name__ = cls.__name__
    return build


from qrsu_models import lru, mamba, minrnn  # noqa: E402  (the linear-recurrence families)

register(ModelSpec("lru", lru.LRUClassifier, "Linear Recurrent Unit: complex diagonal recurrence on a ring near 1, "
                   "pre-norm GLU residual blocks", "Orvieto et al. 2023"))
register(ModelSpec("mingru", _family(minrnn.MinRNNClassifier, cell="mingru"), "minGRU: input-only update gate, "
                   "linear recurrence, pre-norm GLU residual blocks", "Feng et al. 2024"))
register(ModelSpec("minlstm", _family(minrnn.MinRNNClassifier, cell="minlstm"), "minLSTM: input-only normalised "
                   "forget/input gates, linear recurrence, pre-norm GLU residual blocks", "Feng et al. 2024"))
register(ModelSpec("mingru3", _family(minrnn.MinRNNClassifier, cell="mingru"), "minGRU at the depth of its paper's "
                   "experiments: 3 blocks", "Feng et al. 2024", defaults={"layers": 3}))
register(ModelSpec("minlstm3", _family(minrnn.MinRNNClassifier, cell="minlstm"), "minLSTM at the depth of its "
                   "paper's experiments: 3 blocks", "Feng et al. 2024", defaults={"layers": 3}))
register(ModelSpec("mamba", mamba.MambaClassifier, "Mamba: selective SSM (state 16 per channel), causal conv, "
                   "SiLU gate, pre-norm RMSNorm residual blocks", "Gu & Dao 2023"))


from qrsu_models import pascanu  # noqa: E402

register(ModelSpec("pascanu_rnn", pascanu.PascanuRNN, "the tanh RNN of Pascanu et al. 2013 (50 units), with their "
                   "vanishing-gradient regulariser Omega (--omega)", "Pascanu, Mikolov & Bengio 2013"))


def _transformer(*, num_classes: int, vocab_size: int, max_length: int, rngs: nnx.Rngs, hidden: int = 64,
                 layers: int = 2, heads: int = 4, mlp: int | float = 1.0, positions: str = "rotary",
                 pool: str = "mean") -> nnx.Module:
    from qrsu_models import transformer

    # max_length sizes the learned position table (positions beyond it are clamped to its last row).
    return transformer.TransformerClassifier(num_classes=num_classes, vocab_size=vocab_size, max_length=max_length,
                                             hidden=hidden, layers=layers, heads=heads, mlp=mlp,
                                             positions=positions, pool=pool, rngs=rngs)


register(ModelSpec("transformer", _transformer, "pre-LayerNorm Transformer encoder (2 layers, 4 heads, rotary "
                   "positions, masked mean pooling, padded keys masked)",
                   "Vaswani et al. 2017; Xiong et al. 2020 (pre-LN); Su et al. 2021 (rotary)"))
