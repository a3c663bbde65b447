"""Attribution methods: jaxviz vs Captum on the same VGG weights, same process.

    python benchmarks/attribution.py                        # VGG19, 224 px, the four methods
    python benchmarks/attribution.py --size 64 --samples 8 --steps 8 --repeats 1     # quick
    python benchmarks/attribution.py --methods occlusion --window 32 --stride 16

Both sides get the same torchvision-layout weights (tests/torch_reference.py
-> weights.from_torchvision). Captum runs with its batching options at the
values given (``--captum-batch``: perturbations_per_eval, internal_batch_size,
nt_samples_batch_size), jaxviz with ``--batch``. jaxviz's first call (trace +
compile) is timed separately; then each side runs ``--repeats`` times and the
median is reported. Printed per method: seconds, the speed ratio (Captum time
/ jaxviz time, > 1 means jaxviz is faster) and the relative L2 difference of
the maps. SmoothGrad feeds Captum's NoiseTunnel jaxviz's noise (the same
override the tests use) so the two maps are comparable.

Goal (issue 4): >= 2x Captum on every method on the CPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import machine, timeit  # also puts tests/ on sys.path


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vgg19")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=1, help="images per call")
    ap.add_argument("--methods", default="saliency,integrated_gradients,smoothgrad,occlusion,occlusion_full")
    ap.add_argument("--steps", type=int, default=50, help="integrated gradients steps")
    ap.add_argument("--samples", type=int, default=50, help="SmoothGrad samples")
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--occlusion-method", default=None, help="jaxviz occlusion method (default: the library's)")
    ap.add_argument("--batch", type=int, default=16, help="jaxviz batch_size")
    ap.add_argument("--captum-batch", type=int, default=16,
                    help="Captum perturbations_per_eval / internal_batch_size / nt_samples_batch_size")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-captum", action="store_true")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import torch_reference as tr

    from jaxviz import attribution as A
    from jaxviz import models, weights
    from jaxviz.attribution import _common

    net = models.get(args.arch)
    ref = tr.make(args.arch, seed=0)
    params = weights.from_torchvision(ref.state_dict(), net)
    x = np.random.RandomState(0).rand(args.images, args.size, args.size, 3).astype(np.float32)
    xj, xt = jnp.asarray(x), tr.to_nchw(x)
    target = 3
    print(f"{machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"{args.arch} {args.size}px, {args.images} image(s); jaxviz batch_size={args.batch}, "
          f"Captum batch={args.captum_batch}; median of {args.repeats}")

    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    class InjectedNoiseTunnel(NoiseTunnel):
        def __init__(self, method, noise):
            super().__init__(method)
            self._noise = noise

        def _add_noise_to_input(self, input, stdev, nt_samples_partition):  # noqa: A002
            start = self._offset
            self._offset += input.shape[0] * nt_samples_partition
            return input.repeat_interleave(nt_samples_partition, dim=0) + self._noise[start:self._offset]

    stdev, key = 0.15, jax.random.key(0)
    occ_kw = {} if args.occlusion_method is None else {"method": args.occlusion_method}
    ours = {
        "saliency": lambda: A.saliency(net, params, xj, target),
        "integrated_gradients": lambda: A.integrated_gradients(net, params, xj, target, steps=args.steps,
                                                               batch_size=args.batch),
        "smoothgrad": lambda: A.smoothgrad(net, params, xj, target, samples=args.samples, stdev=stdev, key=key,
                                           batch_size=args.batch),
        "occlusion": lambda: A.occlusion(net, params, xj, target, window=args.window, stride=args.stride,
                                         batch_size=args.batch, **occ_kw),
        "occlusion_full": lambda: A.occlusion(net, params, xj, target, window=args.window, stride=args.stride,
                                              batch_size=args.batch, method="full"),
    }

    def captum_smoothgrad():
        noise = stdev * _common.normal_noise(key, jnp.arange(args.images * args.samples), x.shape[1:])
        noise = tr.to_nchw(np.asarray(noise))
        nt = InjectedNoiseTunnel(Saliency(ref), noise)
        nt._offset = 0
        # NoiseTunnel partitions samples, image-major within a partition: keep the order by running one image
        # at a time when it partitions (batch < samples)
        return nt.attribute(xt.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=args.samples,
                            nt_samples_batch_size=args.captum_batch if args.images == 1 else None,
                            stdevs=stdev, target=target)

    occlusion_captum = lambda: Occlusion(ref).attribute(  # noqa: E731
        xt, sliding_window_shapes=(3, args.window, args.window), strides=(3, args.stride, args.stride),
        target=target, perturbations_per_eval=args.captum_batch)
    theirs = {
        "saliency": lambda: Saliency(ref).attribute(xt.clone().requires_grad_(), target=target),
        "integrated_gradients": lambda: IntegratedGradients(ref).attribute(
            xt, target=target, n_steps=args.steps, internal_batch_size=args.captum_batch),
        "smoothgrad": captum_smoothgrad,
        "occlusion": occlusion_captum,
        "occlusion_full": occlusion_captum,
    }
    rows = []
    captum_cache = {}
    results = {}
    if "occlusion" in args.methods:
        p = A.occlusion_plan(net, (args.size, args.size), window=args.window, stride=args.stride)
        print(f"incremental occlusion plan: {p.cost:.3f} of the full convolution work, model takes over after "
              f"{p.fallback}")
    for name in args.methods.split(","):
        fn = ours[name]
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        first = time.perf_counter() - t0
        t_ours = timeit(lambda: jax.block_until_ready(fn()), repeats=args.repeats, warmup=0)
        line = f"{name:22s} jaxviz {t_ours:8.3f}s (first call {first:7.2f}s)"
        if not args.no_captum:
            cfn = theirs[name]
            if cfn in captum_cache:  # occlusion and occlusion_full share one Captum measurement
                cap, t_cap = captum_cache[cfn]
            else:
                with torch.no_grad() if name.startswith("occlusion") else torch.enable_grad():
                    cap = cfn()  # warm-up (and the map to compare)
                    t_cap = timeit(cfn, repeats=args.repeats, warmup=0)
                captum_cache[cfn] = (cap, t_cap)
            err = rel_err(out, tr.to_nhwc(cap.detach()))
            line += f"  Captum {t_cap:8.3f}s  ratio {t_cap / t_ours:5.2f}x  map rel. diff {err:.1e}"
            rows.append((name, t_cap / t_ours))
        print(line, flush=True)
        results[name] = (out, t_ours)
    if "occlusion" in results and "occlusion_full" in results:
        (a, ta), (b, tb) = results["occlusion"], results["occlusion_full"]
        print(f"occlusion {args.occlusion_method or 'auto'} vs jaxviz full: {tb / ta:.2f}x faster, "
              f"map rel. diff {rel_err(a, b):.1e}")
    if rows:
        print("goal >= 2x on every method: " + ("met" if all(r >= 2 for _, r in rows) else "NOT met"))


if __name__ == "__main__":
    main()
