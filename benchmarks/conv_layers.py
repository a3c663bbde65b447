"""Each distinct VGG19 3x3 convolution alone: XLA vs PyTorch (oneDNN), forward and input gradient.

    python benchmarks/conv_layers.py               # batch 8, 224 px network
    python benchmarks/conv_layers.py --batch 1 --size 64

Where the VGG-level ratios (benchmarks/vgg.py, benchmarks/attribution.py) come
from: prints GFLOP/s per layer shape for both frameworks (input gradient:
2 x forward FLOPs, forward + backward-data, PyTorch weights frozen) and the
float32 matmul rate of each measured in the same run. ``--conv-grad`` picks
jaxviz's input-gradient form (``VGG(conv_grad=...)``): "auto" (what the
attribution methods, style transfer and feature visualisation use), "flipped",
or "jax" (JAX's own transpose).
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import machine, matmul_rate, timeit

# (side, in, out) of every distinct convolution of VGG19 at 224 px
SHAPES = [(224, 3, 64), (224, 64, 64), (112, 64, 128), (112, 128, 128), (56, 128, 256), (56, 256, 256),
          (28, 256, 512), (28, 512, 512), (14, 512, 512)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224, help="network input side (the layers' sides scale with it)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--conv-grad", choices=("auto", "flipped", "jax"), default="auto",
                    help="the input-gradient form timed on the XLA side (default: auto)")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch

    import jaxviz  # noqa: F401  (its XLA:CPU settings, as every jaxviz user gets them)
    from jaxviz.models.vgg import CONV_GRADS

    print(f"# {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"jaxviz input gradient: conv_grad={args.conv_grad!r}")
    a = torch.randn(2048, 2048)
    print(f"float32 matmul rate (2048^3): jax {matmul_rate() / 1e9:.0f} GFLOP/s, "
          f"torch {2 * 2048**3 / timeit(lambda: a @ a, repeats=5) / 1e9:.0f} GFLOP/s")

    impl = CONV_GRADS[args.conv_grad] or jax.lax.conv_general_dilated

    def conv(x, w):
        return jax.nn.relu(impl(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))

    fwd = jax.jit(conv)
    grad = jax.jit(lambda x, w: jax.grad(lambda x: jnp.sum(conv(x, w) ** 2))(x))
    print(f"{'side':>5} {'in->out':>9} {'GFLOP':>7} | forward GFLOP/s xla  torch  ratio | "
          f"input grad GFLOP/s xla  torch  ratio")
    totals = np.zeros(4)
    for side, cin, cout in SHAPES:
        side = side * args.size // 224
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(args.batch, side, side, cin)).astype(np.float32)
        w = (0.05 * rng.normal(size=(3, 3, cin, cout))).astype(np.float32)
        xj, wj = jnp.asarray(x), jnp.asarray(w)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())  # frozen: no weight gradient
        gf = 2 * args.batch * side * side * cin * cout * 9 / 1e9

        def t_fwd():
            with torch.no_grad():
                return torch.relu(torch.nn.functional.conv2d(xt, wt, padding=1))

        def t_grad():
            xg = xt.clone().requires_grad_(True)
            (torch.relu(torch.nn.functional.conv2d(xg, wt, padding=1)) ** 2).sum().backward()
            return xg.grad

        ts = [timeit(lambda: fwd(xj, wj).block_until_ready(), repeats=args.repeats), timeit(t_fwd, repeats=args.repeats),
              timeit(lambda: grad(xj, wj).block_until_ready(), repeats=args.repeats),
              timeit(t_grad, repeats=args.repeats)]
        totals += ts
        print(f"{side:>5} {cin:>4}->{cout:<4} {gf:>7.2f} | {'':>15}{gf / ts[0]:>4.0f} {gf / ts[1]:>6.0f} "
              f"{ts[1] / ts[0]:>5.2f}x | {'':>18}{2 * gf / ts[2]:>4.0f} {2 * gf / ts[3]:>6.0f} {ts[3] / ts[2]:>5.2f}x")
    print(f"sum of the layers' seconds: forward xla {totals[0]:.3f} torch {totals[1]:.3f} ({totals[1] / totals[0]:.2f}x); "
          f"input grad xla {totals[2]:.3f} torch {totals[3]:.3f} ({totals[3] / totals[2]:.2f}x)")


if __name__ == "__main__":
    main()
