"""ResNet-50 against PyTorch, and what the model contract's adapters cost, in the same process.

    python benchmarks/models.py                   # ResNet-50 at 224 px, batch 1 and 8; adapter overhead
    python benchmarks/models.py --batches 1 --repeats 3 --arch resnet18

Part 1: ResNet-50 forward and input gradient, jaxviz (BatchNorm folded) vs the
torch.nn re-creation of torchvision's ResNet (tests/torch_reference.py, same
weights, eval mode, frozen: PyTorch computes only the input gradient, as
Captum does). Prints seconds per call, the ratio (PyTorch time / jaxviz time,
>1: jaxviz faster) and the two sides' agreement.

Part 2: the adapter's overhead. The same user-written flax.linen CNN
(functional ``nn.relu``, flax's max pool) is timed called plainly
(``module.apply``) and through the contract: ``models.tapped(module)``'s
``run`` with a tap, its layer gradient (a zero perturbation at the tap, what
Grad-CAM uses) against the same by hand (the activation from flax's
``capture_intermediates``, the gradient of the module with that tap's output
replaced by an argument),
and guided backprop through the jaxpr ReLU rewrite against the module with
guided ReLUs built in. Goal (issue 18): under 5% for each.
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import machine, timeit


def _resnet(args) -> None:
    import jax
    import jax.numpy as jnp

    from jaxviz import models, weights

    net = models.get(args.arch)
    torch = None
    if not args.no_torch:
        import torch
        import torch_reference as tr

        ref = tr.TorchResNet(args.arch, seed=0).requires_grad_(False)
        params = weights.convert(ref.state_dict(), args.arch)
        print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    else:
        params = weights.random(args.arch)
    forward = jax.jit(lambda p, x: net.apply(p, x))

    def score(p, x, target):
        return jnp.take_along_axis(net.apply(p, x), target[:, None], 1).sum()

    grad = jax.jit(jax.grad(score, argnums=1))
    print(f"{args.arch} at {args.size} px")
    print(f"{'what':<22}{'batch':>6}{'jaxviz s':>11}{'torch s':>11}{'ratio':>8}")
    for n in args.batches:
        x_np = np.random.default_rng(0).uniform(size=(n, args.size, args.size, 3)).astype(np.float32)
        x = jnp.asarray(x_np)
        target = jnp.arange(n) % 1000
        t_fwd = timeit(lambda: forward(params, x).block_until_ready(), repeats=args.repeats)
        t_grad = timeit(lambda: grad(params, x, target).block_until_ready(), repeats=args.repeats)
        t_fwd_t = t_grad_t = float("nan")
        if torch is not None:
            xt = tr.to_nchw(x_np)
            tt = torch.as_tensor(np.array(target))
            with torch.no_grad():
                t_fwd_t = timeit(lambda: ref(xt), repeats=args.repeats)

            def torch_grad():
                xg = xt.clone().requires_grad_(True)
                ref(xg).gather(1, tt[:, None]).sum().backward()
                return xg.grad

            t_grad_t = timeit(torch_grad, repeats=args.repeats)
            with torch.no_grad():
                want = ref(xt).numpy()
            got = np.asarray(forward(params, x))
            g_ref = tr.to_nhwc(torch_grad())
            g = np.asarray(grad(params, x, target))
            print(f"# batch {n}: logits rel err {np.linalg.norm(got - want) / np.linalg.norm(want):.1e}, "
                  f"input-gradient rel err {np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref):.1e}")
        print(f"{'forward':<22}{n:>6}{t_fwd:>11.4f}{t_fwd_t:>11.4f}{t_fwd_t / t_fwd:>7.2f}x")
        print(f"{'input gradient':<22}{n:>6}{t_grad:>11.4f}{t_grad_t:>11.4f}{t_grad_t / t_grad:>7.2f}x")


def _adapter(args) -> None:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxviz import models
    from jaxviz.models import protocol, relus

    class UserCNN(nn.Module):
        relu: object = None

        @nn.compact
        def __call__(self, x):
            act = self.relu or nn.relu
            for width in (64, 128, 256):
                x = act(nn.Conv(width, (3, 3))(x))
                x = act(nn.Conv(width, (3, 3))(x))
                x = nn.max_pool(x, (2, 2), (2, 2))
            return nn.Dense(10)(x.mean((1, 2)))

    module = UserCNN()
    n, size = args.adapter_batch, args.adapter_size
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(n, size, size, 3)).astype(np.float32))
    params = jax.jit(module.init)(jax.random.key(0), x)
    tapped = models.tapped(module, input_shape=x.shape)
    layer = "Conv_3"
    print(f"\nadapter overhead: a {len(tapped.layers)}-layer user linen CNN, batch {n} at {size} px")

    def score(out):
        return out[:, 0]

    plain_fwd = jax.jit(lambda p, v: module.apply(p, v))
    tapped_fwd = jax.jit(lambda p, v: tapped.run(p, v, (layer,)))

    # the layer gradient by hand: the module split at the tap (its output replaced by the argument)
    def replaced(p, v, a):
        def icpt(next_fun, a_, k_, ctx):
            out = next_fun(*a_, **k_)
            return a if ctx.method_name == "__call__" and "/".join(ctx.module.path) == layer else out

        with nn.intercept_methods(icpt):
            return module.apply(p, v)

    def captured(p, v):  # the tap's activation by flax's own capture_intermediates
        _, state = module.apply(p, v, capture_intermediates=True)
        return state["intermediates"][layer]["__call__"][0]

    # what Grad-CAM needs: the activation and the gradient of the score with respect to it
    plain_lg = jax.jit(lambda p, v: (lambda a: (a, jax.grad(lambda a: score(replaced(p, v, a)).sum())(a)))(
        captured(p, v)))
    tapped_lg = jax.jit(lambda p, v: protocol.layer_gradient(tapped, p, v, layer, score)[1])
    guided_module = UserCNN(relu=relus.guided_relu)
    plain_guided = jax.jit(jax.grad(lambda v, p: score(guided_module.apply(p, v)).sum()))
    tapped_guided = jax.jit(jax.grad(lambda v, p: score(tapped.run(p, v, relu=relus.guided_relu)[0]).sum()))
    rows = [
        ("forward + tap", lambda: plain_fwd(params, x).block_until_ready(),
         lambda: jax.block_until_ready(tapped_fwd(params, x))),
        ("layer gradient", lambda: jax.block_until_ready(plain_lg(params, x)),
         lambda: tapped_lg(params, x).block_until_ready()),
        ("guided backprop", lambda: plain_guided(x, params).block_until_ready(),
         lambda: tapped_guided(x, params).block_until_ready()),
    ]
    print(f"{'what':<22}{'plain s':>11}{'adapter s':>11}{'overhead':>10}")
    for name, plain, adapted in rows:
        # interleaved rounds, best of each: the two sides see the same machine load
        tp = min(timeit(plain, repeats=args.repeats) for _ in range(3))
        ta = min(timeit(adapted, repeats=args.repeats) for _ in range(3))
        print(f"{name:<22}{tp:>11.4f}{ta:>11.4f}{100 * (ta / tp - 1):>9.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--adapter-batch", type=int, default=8)
    ap.add_argument("--adapter-size", type=int, default=64)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    print(f"# {machine()}")
    _resnet(args)
    _adapter(args)


if __name__ == "__main__":
    main()
