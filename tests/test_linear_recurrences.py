"""The linear-recurrence families (LRU, minGRU, minLSTM, Mamba) and their shared scan: the scan's two methods
against a Python loop, each family against a step-by-step implementation of its paper's equations (outputs and
parameter gradients), and each learning `easy`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qrsu_models import mamba, registry, scan

FAMILIES = ("lru", "mingru", "minlstm", "mamba")


# ------------------------------------------------------------------------------------------------ the scan

def _loop(a, b):
    h, out = jnp.zeros_like(b[0]), []
    for t in range(b.shape[0]):
        h = (a if a.ndim < b.ndim else a[t]) * h + b[t]
        out.append(h)
    return jnp.stack(out)


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
@pytest.mark.parametrize("invariant", [False, True], ids=["a_t", "a"])
def test_sequential_and_parallel_scans_match_a_python_loop_in_value_and_gradient(dtype, invariant):
    rng = np.random.default_rng(0)
    shape = (13, 3, 5)
    a = rng.uniform(-1, 1, shape[1:] if invariant else shape)
    b = rng.normal(size=shape)
    w = rng.normal(size=shape)
    if dtype == "complex64":
        a = a * np.exp(1j * rng.uniform(0, 2 * np.pi, a.shape))
        b = b + 1j * rng.normal(size=shape)
        w = w + 1j * rng.normal(size=shape)
    a, b, w = (jnp.asarray(x, dtype) for x in (a, b, w))

    def loss(fn):
        return lambda a, b: jnp.sum(jnp.real(fn(a, b) * jnp.conj(w)))

    want = _loop(a, b)
    want_grads = jax.jit(jax.grad(loss(_loop), argnums=(0, 1)))(a, b)
    assert np.abs(np.asarray(want_grads[0])).max() > 0  # the check below can fail
    for method in ("sequential", "adjoint", "parallel", "auto"):
        fn = lambda a, b, m=method: scan.linear_scan(a, b, m)  # noqa: E731
        np.testing.assert_allclose(fn(a, b), want, rtol=1e-5, atol=1e-5, err_msg=method)
        for got, ref in zip(jax.jit(jax.grad(loss(fn), argnums=(0, 1)))(a, b), want_grads):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=method)


def test_scan_choices_are_checked():
    assert scan.resolve("auto") == ("adjoint" if jax.default_backend() == "cpu" else "parallel")
    with pytest.raises(ValueError, match="unknown scan 'fast'; choose one of: auto, sequential, adjoint, parallel"):
        scan.linear_scan(jnp.ones((2, 1)), jnp.ones((2, 1)), "fast")
    with pytest.raises(ValueError, match="unknown scan 'fast'"):
        registry.get("lru").build(num_classes=4, max_length=8, seed=0, options={"scan": "fast"})
    with pytest.raises(ValueError, match="unknown scan 'fast'; choose one of: auto, sequential, adjoint, parallel, "
                                         "fused, fused-adjoint"):
        registry.get("mamba").build(num_classes=4, max_length=8, seed=0, options={"scan": "fast"})
    assert mamba.resolve_scan("auto") == ("fused-adjoint" if jax.default_backend() == "cpu" else "parallel")


def _selective_loop(dt, x, b, c, a):
    def step(h, inputs):  # the paper's recurrence, one step at a time
        dt_t, x_t, b_t, c_t = inputs
        h = jnp.exp(dt_t[..., None] * a) * h + (dt_t * x_t)[..., None] * b_t[:, None, :]
        return h, jnp.einsum("bdn,bn->bd", h, c_t)

    return jax.lax.scan(step, jnp.zeros((*x.shape[1:], a.shape[1])), (dt, x, b, c))[1]


@pytest.mark.parametrize("last", [False, True], ids=["every-step", "last-step"])
def test_mambas_selective_scans_match_a_step_by_step_loop_in_value_and_gradient(last):
    # More rows than a tile (two tiles, the second padded) and a length that is no multiple of a chunk; padded
    # steps first, with x = 0 but dt > 0 there, as the mixer makes them.
    steps, rows, channels, state = 2 * mamba.CHUNK + 5, mamba.TILE + 4, 32, 4
    rng = np.random.default_rng(2)
    real = (np.arange(steps)[:, None] >= rng.integers(0, steps // 2, rows)[None, :])[..., None]
    dt = np.log1p(np.exp(rng.normal(-2.0, 1.0, (steps, rows, channels))))
    x = rng.normal(size=(steps, rows, channels)) * real
    b, c = rng.normal(size=(2, steps, rows, state))
    a = -np.arange(1, state + 1) * rng.uniform(0.5, 1.5, (channels, state))
    w = rng.normal(size=(rows, channels) if last else (steps, rows, channels))
    args = tuple(jnp.asarray(v, jnp.float32) for v in (dt, x, b, c, a))
    w = jnp.asarray(w, jnp.float32)

    def reference(*args):
        y = _selective_loop(*args)
        return jnp.sum((y[-1] if last else y) * w)

    want, want_grads = jax.jit(jax.value_and_grad(reference, argnums=range(5)))(*args)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in want_grads)  # every input matters: the checks can fail
    for method in ("sequential", "fused", "fused-adjoint"):
        got, grads = jax.jit(jax.value_and_grad(
            lambda *a, m=method: jnp.sum(mamba.selective_scan(*a, method=m, last=last) * w), argnums=range(5)))(*args)
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=method)
        for name, g, ref in zip("dt x b c a".split(), grads, want_grads):
            np.testing.assert_allclose(g, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max(), err_msg=f"{method} d{name}")


# ------------------------------------------------------- each family against its paper's equations, step by step

def _layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def _rms_norm(x, p, eps=1e-6):
    return x / jnp.sqrt((x * x).mean(-1, keepdims=True) + eps) * p["scale"]


def _sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


def _gelu(x):  # the tanh approximation (the LRU block's GELU)
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _silu(x):
    return x * _sigmoid(x)


def _linear(x, p):
    return x @ p["kernel"] + p.get("bias", 0.0)


def _glu_residual(x, y, p):
    z = _linear(_gelu(y), p["glu"])
    value, gate = z[:x.shape[0]], z[x.shape[0]:]
    return x + value * _sigmoid(gate)


def _lru_layer(us, p):
    """x_k = lambda x_{k-1} + gamma (B u_k), y_k = Re(C x_k) + D u_k, one step at a time (the paper's eq.)."""
    lam = jnp.exp(-jnp.exp(p["nu_log"]) + 1j * jnp.exp(p["theta_log"]))
    gamma = jnp.exp(p["gamma_log"])
    b = p["b_re"] + 1j * p["b_im"]  # [H, N]: B u = u @ b
    c = p["c_re"] + 1j * p["c_im"]  # [N, H]
    x, ys = jnp.zeros(b.shape[1], jnp.complex64), []
    for u in us:
        x = lam * x + gamma * (u @ b)
        ys.append(jnp.real(x @ c) + p["d"] * u)
    return ys


def _min_layer(cell):
    def layer(us, p):
        """minGRU: h = (1-z) h + z h~; minLSTM: h = f/(f+i) h + i/(f+i) h~; gates from the input only."""
        hidden = us[0].shape[0]
        h, hs = jnp.zeros(hidden), []
        for u in us:
            pre = _linear(u, p["proj"])
            if cell == "mingru":
                z, h_tilde = _sigmoid(pre[:hidden]), pre[hidden:]
                h = (1 - z) * h + z * h_tilde
            else:
                f, i, h_tilde = _sigmoid(pre[:hidden]), _sigmoid(pre[hidden:2 * hidden]), pre[2 * hidden:]
                h = f / (f + i) * h + i / (f + i) * h_tilde
            hs.append(h)
        return hs
    return layer


def _mamba_layer(us, p):
    """in-proj, causal depthwise conv, SiLU, the selective SSM per channel, D skip, SiLU gate, out-proj."""
    inner, state = p["a_log"].shape
    width = p["conv_kernel"].shape[0]
    rank = p["dt_proj"]["kernel"].shape[0]
    a = -jnp.exp(p["a_log"])
    h, history, outs = jnp.zeros((inner, state)), [jnp.zeros(inner)] * (width - 1), []
    for u in us:
        xz = u @ p["in_proj"]["kernel"]
        x, z = xz[:inner], xz[inner:]
        history = [*history, x][-width:]  # the last `width` inputs, oldest first
        x = _silu(p["conv_bias"] + sum(p["conv_kernel"][k] * history[k] for k in range(width)))
        proj = x @ p["x_proj"]["kernel"]
        dt = jax.nn.softplus(_linear(proj[:rank], p["dt_proj"]))
        b, c = proj[rank:rank + state], proj[rank + state:]
        h = jnp.exp(dt[:, None] * a) * h + (dt * x)[:, None] * b[None, :]
        y = h @ c + p["d"] * x
        outs.append((y * _silu(z)) @ p["out_proj"]["kernel"])
    return outs


def _reference_logits(name, params, seq):
    """Logits [C] of one unpadded sequence, every layer one step at a time."""
    xs = [params["embed"]["embedding"][t] for t in seq]
    for i in sorted(params["blocks"]):
        p = params["blocks"][i]
        if name == "mamba":
            ys = _mamba_layer([_rms_norm(x, p["norm"]) for x in xs], p["mixer"])
            xs = [x + y for x, y in zip(xs, ys)]
        else:
            layer = _lru_layer if name == "lru" else _min_layer(name)
            ys = layer([_layer_norm(x, p["norm"]) for x in xs], p["mixer"])
            xs = [_glu_residual(x, y, p) for x, y in zip(xs, ys)]
    norm = _rms_norm if name == "mamba" else _layer_norm
    return _linear(norm(xs[-1], params["norm"]), params["head"])


SMALL = {"lru": {"hidden": 8, "layers": 2, "state": 6}, "mingru": {"hidden": 8, "layers": 2},
         "minlstm": {"hidden": 8, "layers": 2}, "mamba": {"hidden": 8, "layers": 2, "state": 4}}


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_computes_its_papers_equations_in_value_and_gradient(name):
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 8, n) for n in (3, 6, 1)]
    tokens = rng.integers(0, 8, (3, 8)).astype(np.int32)  # pre-padded with random ids
    for i, s in enumerate(seqs):
        tokens[i, 8 - len(s):] = s
    tokens, lengths = jnp.asarray(tokens), jnp.asarray([len(s) for s in seqs])
    w = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)

    def reference_loss(params):
        return sum(jnp.sum(_reference_logits(name, params, s) * w[i]) for i, s in enumerate(seqs))

    reference = jax.value_and_grad(reference_loss)  # op by op: on these few steps faster than compiling the loops
    first = None  # (parameters, reference value, reference gradients) of the first method
    # The CPU default (the hand-written backward pass; Mamba's 'fused-adjoint') and the accelerators' parallel
    # scan (Mamba's other scans: test_mambas_selective_scans_match_a_step_by_step_loop_in_value_and_gradient).
    for method in ("fused-adjoint" if name == "mamba" else "adjoint", "parallel"):
        model = registry.get(name).build(num_classes=3, max_length=12, seed=0,
                                         options={**SMALL[name], "scan": method})
        graphdef, state = nnx.split(model, nnx.Param)
        params = nnx.to_pure_dict(state)

        def loss(params):
            nnx.replace_by_pure_dict(state, params)
            return jnp.sum(nnx.merge(graphdef, state)(tokens, lengths) * w)

        if first:  # the same parameters (the scan is no parameter), so the same reference
            jax.tree.map(np.testing.assert_array_equal, params, first[0])
        else:
            first = params, *reference(params)
        _, want, want_grads = first
        got, grads = jax.jit(jax.value_and_grad(loss))(params)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=method)
        flat_want = dict(jax.tree_util.tree_flatten_with_path(want_grads)[0])
        flat_got = dict(jax.tree_util.tree_flatten_with_path(grads)[0])
        assert set(flat_got) == set(flat_want)
        for path, g in flat_got.items():
            where = f"{method} {jax.tree_util.keystr(path)}"
            assert np.abs(np.asarray(flat_want[path])).max() > 0, where  # every parameter matters
            np.testing.assert_allclose(g, flat_want[path], rtol=2e-4, atol=2e-5, err_msg=where)


def test_mambas_fused_adjoint_model_matches_its_simple_scan_over_several_batch_tiles():
    # The classifier's last block takes the custom VJP of the SSM's inputs and closed form, by batch tiles; the
    # simple scan (materialised coefficients, sequential lax.scan, autodiff) is the reference.
    rng = np.random.default_rng(3)
    rows, steps = mamba.TILE + 5, 21
    lengths = jnp.asarray(rng.integers(1, steps + 1, rows))
    tokens = jnp.asarray(rng.integers(0, 8, (rows, steps)), jnp.int32)
    w = jnp.asarray(rng.normal(size=(rows, 3)), jnp.float32)
    results = []
    for method in ("fused-adjoint", "sequential"):
        model = registry.get("mamba").build(num_classes=3, max_length=steps, seed=0,
                                            options={"hidden": 16, "state": 4, "scan": method})
        graphdef, state = nnx.split(model, nnx.Param)

        def loss(params):
            nnx.replace_by_pure_dict(state, params)
            return jnp.sum(nnx.merge(graphdef, state)(tokens, lengths) * w)

        results.append(jax.jit(jax.value_and_grad(loss))(nnx.to_pure_dict(state)))
    (got, grads), (want, want_grads) = results
    np.testing.assert_allclose(got, want, rtol=1e-4)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        ref = dict(jax.tree_util.tree_flatten_with_path(want_grads)[0])[path]
        assert np.abs(np.asarray(ref)).max() > 0, jax.tree_util.keystr(path)
        np.testing.assert_allclose(g, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max(), err_msg=jax.tree_util.keystr(path))


def test_defaults_sizes():
    sizes = {}
    for name in FAMILIES:
        model = registry.get(name).build(num_classes=4, max_length=110, seed=0)
        sizes[name] = (registry.parameter_count(model), registry.state_size(model, 110))
    assert all(15_000 <= p <= 60_000 for p, _ in sizes.values()), sizes  # one block each, width 64
    assert sizes["lru"][1] == 2 * 64  # 64 complex numbers
    assert sizes["mingru"][1] == sizes["minlstm"][1] == 64
    assert sizes["mamba"][1] == 2 * 64 * (16 + 3)  # SSM state [E*H, N] and the conv's last 3 inputs


def test_the_lru_starts_on_its_ring_and_mamba_with_its_papers_init():
    lru = registry.get("lru").build(num_classes=4, max_length=8, seed=0, options={"r_min": 0.95, "r_max": 0.99})
    modulus = np.abs(np.asarray(lru.blocks[0].mixer.eigenvalues()))
    assert modulus.min() >= 0.95 - 1e-6 and modulus.max() <= 0.99 + 1e-6 and modulus.std() > 0
    gamma = np.exp(np.asarray(lru.blocks[0].mixer.gamma_log[...]))
    np.testing.assert_allclose(gamma, np.sqrt(1 - modulus ** 2), rtol=1e-5)
    # The default is the paper's long-range (PathX) ring and phases, which nightmare needs.
    default = np.asarray(registry.get("lru").build(num_classes=4, max_length=8, seed=0).blocks[0].mixer.eigenvalues())
    assert np.abs(default).min() >= 0.999 - 1e-6 and np.abs(default).max() <= 0.9999 + 1e-6
    assert 0 <= np.angle(default).min() and np.angle(default).max() <= np.pi / 10 + 1e-6 and np.angle(default).std() > 0
    mamba = registry.get("mamba").build(num_classes=4, max_length=8, seed=0).blocks[0].mixer
    np.testing.assert_allclose(-np.exp(np.asarray(mamba.a_log[...]))[0], -np.arange(1, 17), rtol=1e-6)
    dt = np.asarray(jax.nn.softplus(mamba.dt_proj.bias[...]))
    assert dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6 and dt.max() / dt.min() > 10


# That each family learns easy (above 99% test accuracy within 3,200 sequences) is tested through the
# experiment's protocol: tests/test_experiment.py::test_every_family_of_the_grid_learns_easy_through_the_protocol.


def test_minlstm_normalised_gates_are_finite_where_both_sigmoids_underflow():
    # f / (f + i) of the sigmoids is 0/0 in float32 once both pre-activations are below about -88; a minLSTM
    # run on hard went NaN that way. The gates must be the same numbers elsewhere, and finite there.
    import jax
    import jax.numpy as jnp
    import numpy as np

    from qrsu_models import minrnn
    pre = jnp.array([[-200.0, -190.0, 3.0], [-100.0, -100.0, 2.0], [1.0, -2.0, 5.0], [4.0, 0.5, -1.0]])
    a, b = minrnn.coefficients("minlstm", pre)
    assert np.isfinite(np.asarray(a)).all() and np.isfinite(np.asarray(b)).all()
    f, i = jax.nn.sigmoid(pre[:, :1]), jax.nn.sigmoid(pre[:, 1:2])
    np.testing.assert_allclose(a[2:], (f / (f + i))[2:], rtol=1e-6)
    np.testing.assert_allclose(b[2:], (i / (f + i) * pre[:, 2:])[2:], rtol=1e-6)
    np.testing.assert_allclose(a[:2, 0], [1 / (1 + np.exp(10.0)), 0.5], rtol=1e-5)  # e^-200 / (e^-200 + e^-190)
    np.testing.assert_allclose(a + b / pre[:, 2:], 1.0, rtol=1e-6)  # the two gates still sum to 1
