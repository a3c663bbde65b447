"""An experiment, not a library feature: Winograd F(4x4, 3x3) convolutions for VGG19 on XLA:CPU.

    python benchmarks/winograd.py                       # layer table, then VGG19 at batch 1 and 16
    python benchmarks/winograd.py --batches 1 --skip-layers

Why it is here: direct convolutions already run at 85-100% of this CPU's
float32 matmul rate in XLA and in PyTorch alike, so the issues' 2x goals
need fewer multiplications. Winograd F(4x4, 3x3) (Lavin & Gray, 2016) needs
36 instead of 144 per 4x4 output tile. Written in JAX with the transforms as
Kronecker-matrix products and the 36 per-point products as one batched
matmul, it prints, per VGG19 layer shape, direct vs Winograd GFLOP/s
(counted as the direct convolution's FLOPs) for the forward pass and the
input gradient (Winograd's transpose, reusing the transformed kernel), with
the relative L2 error against the direct convolution; then the VGG19 input
gradient with the 56 and 28 px layers (``--sides``) in Winograd form against
``conv_grad="auto"`` (what jaxviz's methods use), with the gradient's
relative L2 difference.

What it showed (jaxlib 0.10.2, 2 cores): the 28-56 px layers run 1.5-2x
faster per layer once the kernel is transformed, but transforming a
512x512 kernel costs ~8 ms per call, and the 14, 112 and 224 px layers are
slower in Winograd form (their transforms are memory-bound). End to end,
with the 56, 28 and 14 px layers in Winograd form (``--sides 56 28 14``,
measured on a quiet machine): 1.09x at batch 1, 1.24x at batch 16. The per-layer error grows from ~5e-7
to ~4e-6 relative; the logits barely move (2e-6), but the input gradient
moves by ~5e-3 relative L2, five times the PyTorch-vs-jaxviz difference
(9e-4, ``benchmarks/vgg.py``), with average pooling as well (4e-3), so it is
not only max-pool argmaxes that flip. Far from the 2x goal and less exact,
so jaxviz keeps direct convolutions.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import machine, timeit

# Lavin & Gray's F(4x4, 3x3) matrices: interpolation points 0, 1, -1, 2, -2, infinity.
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)
M, A = 4, 6  # output tile side, input tile side

SHAPES = [(224, 64, 64), (112, 128, 128), (56, 256, 256), (28, 512, 512), (14, 512, 512)]


def kernel_transform(w):
    """HWIO 3x3 kernel -> (36, C_in, C_out): G g G^T for every (in, out) pair."""
    import jax
    import jax.numpy as jnp

    c, k = w.shape[2:]
    return jnp.dot(np.kron(G, G).astype(np.float32), w.reshape(9, c * k),
                   precision=jax.lax.Precision.HIGHEST).reshape(A * A, c, k)


def winograd_conv(x, u):
    """Stride-1 'SAME' 3x3 convolution of NHWC ``x`` with a transformed kernel ``u``."""
    import jax
    import jax.numpy as jnp

    hi = jax.lax.Precision.HIGHEST
    n, h, w, c = x.shape
    th, tw = -(-h // M), -(-w // M)
    xp = jnp.pad(x, ((0, 0), (1, th * M + 1 - h), (1, tw * M + 1 - w), (0, 0)))
    tiles = jnp.stack([xp[:, i:i + M * th:M, j:j + M * tw:M] for i in range(A) for j in range(A)])
    v = jnp.dot(np.kron(BT, BT).astype(np.float32), tiles.reshape(A * A, -1), precision=hi)
    prod = jax.lax.dot_general(v.reshape(A * A, n * th * tw, c), u, (((2,), (1,)), ((0,), (0,))))
    y = jnp.dot(np.kron(AT, AT).astype(np.float32), prod.reshape(A * A, -1), precision=hi)
    y = y.reshape(M, M, n, th, tw, -1).transpose(2, 3, 0, 4, 1, 5).reshape(n, th * M, tw * M, -1)
    return y[:, :h, :w]


def _direct(x, w):
    import jax

    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _rel(a, b) -> float:
    import jax.numpy as jnp

    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def layers(batch: int, repeats: int) -> None:
    import jax

    from jaxviz.models.layers import conv_auto_grad

    print(f"\nlayers, batch {batch}: GFLOP/s (direct convolution FLOPs / time) and relative L2 error")
    heads = ("fwd direct", "fwd wino", "+kernel", "grad auto", "grad wino")
    print(f"{'layer':>16} " + " ".join(f"{h:>9}" for h in heads) + f" {'err':>8}")
    key = jax.random.key(0)
    for side, c, k in SHAPES:
        x = jax.random.normal(key, (batch, side, side, c))
        w = jax.random.normal(jax.random.key(1), (3, 3, c, k)) * (2 / (9 * c)) ** 0.5
        g = jax.random.normal(jax.random.key(2), (batch, side, side, k))
        u = kernel_transform(w)
        flops = 2 * batch * side * side * c * k * 9
        direct, wino = jax.jit(_direct), jax.jit(winograd_conv)
        both = jax.jit(lambda x, w: winograd_conv(x, kernel_transform(w)))
        auto = jax.jit(lambda x, w, g: jax.vjp(
            lambda x: conv_auto_grad(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")),
            x)[1](g)[0])
        wgrad = jax.jit(lambda x, u, g: jax.vjp(lambda x: winograd_conv(x, u), x)[1](g)[0])
        rates = [flops / timeit(lambda f=f, a=a: f(*a).block_until_ready(), repeats=repeats) / 1e9
                 for f, a in ((direct, (x, w)), (wino, (x, u)), (both, (x, w)), (auto, (x, w, g)), (wgrad, (x, u, g)))]
        err = max(_rel(wino(x, u), direct(x, w)), _rel(wgrad(x, u, g), auto(x, w, g)))
        print(f"{f'{side}px {c}->{k}':>16} " + " ".join(f"{r:9.0f}" for r in rates) + f" {err:8.1e}")


def end_to_end(batch: int, repeats: int, sides: list[int], pooling: str) -> None:
    import jax

    from jaxviz import models, weights
    from jaxviz.models import layers as L
    from jaxviz.models import vgg

    @jax.custom_vjp
    def wconv(x, w):
        return winograd_conv(x, kernel_transform(w))

    def fwd(x, w):
        u = kernel_transform(w)
        return winograd_conv(x, u), (x, w, u)

    def bwd(res, g):
        x, w, u = res
        return (jax.vjp(lambda x: winograd_conv(x, u), x)[1](g)[0],
                jax.vjp(lambda w: _direct(x, w), w)[1](g)[0])

    wconv.defvjp(fwd, bwd)

    def conv(lhs, rhs, strides, padding, *args, **kwargs):
        if rhs.shape[:2] == (3, 3) and lhs.shape[1] in sides and tuple(map(tuple, padding)) == ((1, 1), (1, 1)):
            return wconv(lhs, rhs)
        return L.conv_auto_grad(lhs, rhs, strides, padding, *args, **kwargs)

    vgg.CONV_GRADS["winograd-experiment"] = conv  # this process only
    net, params = models.vgg19(pooling=pooling), weights.random("vgg19", seed=0)
    x = jax.random.uniform(jax.random.key(1), (batch, 224, 224, 3))
    out = {}
    for mode in ("auto", "winograd-experiment"):
        m = net.clone(conv_grad=mode)
        grad = jax.jit(jax.grad(lambda x, m=m: m.apply(params, x)[:, 3].sum()))
        out[mode] = (timeit(lambda: grad(x).block_until_ready(), repeats=repeats), grad(x),
                     jax.jit(m.apply)(params, x))
    (ta, ga, la), (tw, gw, lw) = out["auto"], out["winograd-experiment"]
    where = "/".join(map(str, sides))
    print(f"\nVGG19 ({pooling} pooling) 224 px input gradient, batch {batch}, Winograd on the {where} px layers: "
          f"auto {ta:.3f} s, Winograd {tw:.3f} s, speed-up {ta / tw:.2f}x; "
          f"relative L2 vs auto: gradient {_rel(gw, ga):.1e}, logits {_rel(lw, la):.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sides", type=int, nargs="+", default=[56, 28],
                    help="map sides whose layers take the Winograd form end to end (default: 56 28)")
    ap.add_argument("--pooling", choices=("max", "avg"), default="max",
                    help="avg: no max-pool argmaxes to flip, so the gradient error is the convolutions' alone")
    ap.add_argument("--skip-layers", action="store_true")
    args = ap.parse_args()
    import jaxviz  # noqa: F401  (its XLA:CPU settings)

    print(machine())
    if not args.skip_layers:
        for b in args.batches:
            layers(b, args.repeats)
    for b in args.batches:
        end_to_end(b, args.repeats, args.sides, args.pooling)


if __name__ == "__main__":
    main()
