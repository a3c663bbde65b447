"""VGG19 forward and input-gradient: jaxviz vs the PyTorch reference, same weights, same process.

    python benchmarks/vgg.py                 # batch 1 and 8 at 224 px
    python benchmarks/vgg.py --batches 1 --repeats 3
    python benchmarks/vgg.py --dtype bfloat16   # both sides compute in bfloat16

PyTorch's weights are frozen, so both sides compute the input gradient only.
jaxviz's input gradient is that of ``models.reverse_mode(net)``
(``conv_grad="auto"``), the form its attribution methods use.
Prints seconds per call for both, the speed ratio (PyTorch time / jaxviz
time, >1 means jaxviz is faster), and jaxviz's achieved GFLOP/s on the forward
pass against the float32 matmul rate measured in the same run.
Goals (issue 2): input gradient >= 2x PyTorch; forward >= 60% of the matmul rate.

``--dtype bfloat16`` computes in bfloat16 on both sides (jaxviz's ``dtype=`` model
option; PyTorch's model converted with ``.to(torch.bfloat16)``) and also prints
both libraries' bfloat16 matmul rates. On CPUs with AMX (Sapphire Rapids and later) PyTorch's oneDNN
runs bfloat16 convolutions on the AMX tiles, while XLA:CPU's convolutions do
not use them; the percentages stay relative to the float32 matmul rate.
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import machine, matmul_rate, timeit, vgg_flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vgg19")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype, both sides")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from jaxviz import models, weights

    print(f"# {machine()}")
    torch = None
    if not args.no_torch:
        import torch
        import torch_reference as tr

        ref = tr.make(args.arch, seed=0)
        # Frozen weights: PyTorch then computes only the input gradient, as jaxviz does (and as Captum's
        # torch.autograd.grad(out, inputs) does). With trainable weights .backward() would also compute
        # every weight gradient, ~1.5x the work, and the ratio would flatter jaxviz.
        ref.requires_grad_(False)
        params = weights.from_torchvision(ref.state_dict(), args.arch)
        print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    else:
        params = weights.random(args.arch)
    bf16 = args.dtype == "bfloat16"
    net = models.get(args.arch, dtype=jnp.bfloat16) if bf16 else models.get(args.arch)
    rate = matmul_rate()
    print(f"float32 matmul rate (2048^3, jax): {rate / 1e9:.1f} GFLOP/s")
    if bf16:
        print(f"bfloat16 matmul rate (2048^3, jax, float32 result): {matmul_rate(dtype=jnp.bfloat16) / 1e9:.1f} GFLOP/s")
    if torch is not None:
        for name, dt in [("float32", torch.float32)] + ([("bfloat16", torch.bfloat16)] if bf16 else []):
            a = torch.randn(2048, 2048, dtype=dt)
            t = timeit(lambda: a @ a, repeats=5)
            print(f"{name} matmul rate (2048^3, torch): {2 * 2048**3 / t / 1e9:.1f} GFLOP/s")
        if bf16:
            # PyTorch at its best in bfloat16: weights converted once. torch.autocast converts them on every call
            # and measured no faster than float32 here (0.184 vs 0.186 s batch-1 forward; converted: 0.079 s).
            ref = ref.to(torch.bfloat16)
            ref.mean, ref.std = ref.mean.to(torch.bfloat16), ref.std.to(torch.bfloat16)
        tdtype = torch.bfloat16 if bf16 else torch.float32

    forward = jax.jit(lambda p, x: net.apply(p, x))

    rnet = models.reverse_mode(net)  # conv_grad="auto": what jaxviz's gradient methods differentiate

    def score(p, x, target):
        return jnp.take_along_axis(rnet.apply(p, x), target[:, None], 1).sum()

    grad = jax.jit(jax.grad(score, argnums=1))
    print(f"{'what':<22}{'batch':>6}{'jaxviz s':>11}{'torch s':>11}{'ratio':>8}{'GFLOP/s':>10}{'% matmul':>10}")
    for n in args.batches:
        x_np = np.random.default_rng(0).uniform(size=(n, args.size, args.size, 3)).astype(np.float32)
        x = jnp.asarray(x_np)
        target = jnp.arange(n) % 1000
        forward(params, x).block_until_ready()
        grad(params, x, target).block_until_ready()
        t_fwd = timeit(lambda: forward(params, x).block_until_ready(), repeats=args.repeats)
        t_grad = timeit(lambda: grad(params, x, target).block_until_ready(), repeats=args.repeats)
        flops = vgg_flops(net, args.size, args.size) * n
        r_fwd = r_grad = float("nan")
        t_fwd_t = t_grad_t = float("nan")
        if torch is not None:
            xt = tr.to_nchw(x_np)
            tt = torch.as_tensor(np.array(target))
            xt = xt.to(tdtype)
            with torch.no_grad():
                t_fwd_t = timeit(lambda: ref(xt), repeats=args.repeats)

            def torch_grad():
                xg = xt.clone().requires_grad_(True)
                ref(xg).float().gather(1, tt[:, None]).sum().backward()
                return xg.grad.float()

            t_grad_t = timeit(torch_grad, repeats=args.repeats)
            r_fwd, r_grad = t_fwd_t / t_fwd, t_grad_t / t_grad
            # same numbers?
            with torch.no_grad():
                ref_logits = ref(xt).float().numpy()
            ours = np.asarray(forward(params, x), np.float32)
            err = np.linalg.norm(ours - ref_logits) / np.linalg.norm(ref_logits)
            g_ref = tr.to_nhwc(torch_grad())
            g = np.asarray(grad(params, x, target), np.float32)
            gerr = np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref)
            print(f"# batch {n}: logits rel err {err:.1e}, input-gradient rel err {gerr:.1e}")
        gf = flops / t_fwd / 1e9
        print(f"{'forward':<22}{n:>6}{t_fwd:>11.4f}{t_fwd_t:>11.4f}{r_fwd:>7.2f}x{gf:>10.1f}{100 * gf * 1e9 / rate:>9.0f}%")
        gg = 2 * flops / t_grad / 1e9  # forward + backward-data (no weight gradients)
        print(f"{'input gradient':<22}{n:>6}{t_grad:>11.4f}{t_grad_t:>11.4f}{r_grad:>7.2f}x{gg:>10.1f}{100 * gg * 1e9 / rate:>9.0f}%")


if __name__ == "__main__":
    main()
