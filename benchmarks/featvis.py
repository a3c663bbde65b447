"""Activation maximisation and DeepDream: jaxviz vs a PyTorch loop doing the same, same weights, same process.

    python benchmarks/featvis.py                       # VGG19; act-max 128 px at relu4_1, DeepDream 224 px at relu4_2
    python benchmarks/featvis.py --render-size 64 --dream-size 96 --steps 4 --repeats 1     # quick

Both sides use the same VGG19 weights (tests/torch_reference.py converted
with weights.from_torchvision), the same image sizes, the same layer and the
same algorithm per step:

* activation maximisation: a 1/f-scaled Fourier image in decorrelated colour
  through a sigmoid; pad 12, jitter 8, random zoom and rotation, jitter 4;
  VGG up to the layer; minus the channel's mean activation; Adam (lr 0.05).
  PyTorch does it the way lucent does (torch.fft, grid_sample, torch.optim.Adam).
  Rows for 1 image (jaxviz: render_update) and for a batch of channels
  (jaxviz: render_channels, end to end; PyTorch: one batch).
* DeepDream: random roll, gradient of ½ mean(a²) at the layer, roll back,
  normalise by the mean |g|, step, clip to [0, 1].

Weights are frozen on the PyTorch side (requires_grad False), so it computes
no weight gradients. Each side is warmed up (jaxviz compiles) before timing;
times are medians of --repeats runs of --steps steps. The ratio is PyTorch
time / jaxviz time (> 1: jaxviz faster). Goal (issue 5): >= 1.5x on the CPU.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from _common import machine, timeit


def torch_layer_index(ref, layer: str) -> int:
    """Index in ref.features after which ``layer`` (conv/relu/pool name) is available."""
    import torch.nn as nn

    b, n = 1, 1
    for i, m in enumerate(ref.features):
        if isinstance(m, nn.Conv2d):
            name = f"conv{b}_{n}"
        elif isinstance(m, nn.ReLU):
            name = f"relu{b}_{n}"
            n += 1
        else:
            name = f"pool{b}"
            b, n = b + 1, 1
        if name == layer:
            return i + 1
    raise ValueError(layer)


class TorchActMax:
    """lucent-style activation maximisation in plain PyTorch."""

    def __init__(self, torch, feats, mean, std, size, channels, seed=0):
        self.t, self.feats, self.mean, self.std = torch, feats, mean, std
        self.h = self.w = size
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.rfftfreq(size)[None, :]
        freqs = np.sqrt(fx * fx + fy * fy)
        self.scale = torch.tensor((1.0 / np.maximum(freqs, 1.0 / size)) * size, dtype=torch.float32)
        m = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
        self.colour = torch.tensor(m / np.max(np.linalg.norm(m, axis=0)))
        self.channels = torch.tensor(channels)
        g = torch.Generator().manual_seed(seed)
        k = len(channels)
        self.spectrum = (0.01 * torch.randn(k, 3, size, size // 2 + 1, 2, generator=g)).requires_grad_(True)
        self.opt = torch.optim.Adam([self.spectrum], lr=0.05)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.scales = [1 + (i - 5) / 50.0 for i in range(11)]
        self.angles = list(range(-10, 11)) + 5 * [0]

    def image(self):
        t = self.t
        s = t.view_as_complex(self.spectrum) * self.scale
        img = t.fft.irfft2(s, s=(self.h, self.w)) / 4.0  # (k, 3, h, w)
        img = t.einsum("kchw,dc->kdhw", img, self.colour)
        return t.sigmoid(img)

    def transform(self, x):
        t, F = self.t, self.t.nn.functional
        r = lambda n: int(t.randint(0, n, (1,), generator=self.gen))
        x = F.pad(x, (12, 12, 12, 12), value=0.5)
        dy, dx = r(9), r(9)
        x = x[:, :, dy:dy + x.shape[2] - 8, dx:dx + x.shape[3] - 8]
        s = self.scales[r(len(self.scales))]
        a = math.radians(self.angles[r(len(self.angles))])
        theta = t.tensor([[math.cos(a) / s, -math.sin(a) / s, 0.0], [math.sin(a) / s, math.cos(a) / s, 0.0]])
        grid = F.affine_grid(theta[None].expand(x.shape[0], 2, 3), list(x.shape), align_corners=True)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
        dy, dx = r(5), r(5)
        return x[:, :, dy:dy + x.shape[2] - 4, dx:dx + x.shape[3] - 4]

    def step(self):
        self.opt.zero_grad()
        x = self.transform(self.image())
        a = self.feats((x - self.mean) / self.std)
        per = a[self.t.arange(a.shape[0]), self.channels].mean(dim=(1, 2))
        loss = -per.sum()
        loss.backward()
        self.opt.step()
        return loss

    def run(self, steps):
        for _ in range(steps):
            loss = self.step()
        return float(loss.detach())


def torch_dream_steps(torch, feats, mean, std, x, steps, step_size, jitter, gen):
    for _ in range(steps):
        dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
        rolled = torch.roll(x, (dy, dx), dims=(2, 3)).requires_grad_(True)
        a = feats((rolled - mean) / std)
        loss = 0.5 * (a * a).sum(1).mean()
        (g,) = torch.autograd.grad(loss, rolled)
        g = torch.roll(g, (-dy, -dx), dims=(2, 3))
        g = g / (g.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-8)
        x = (x + step_size * g).clamp(0, 1).detach()
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vgg19")
    ap.add_argument("--render-size", type=int, default=128)
    ap.add_argument("--render-layer", default="relu4_1")
    ap.add_argument("--channels", type=int, default=4, help="batch of channels for the batched act-max row")
    ap.add_argument("--dream-size", type=int, default=224)
    ap.add_argument("--dream-layer", default="relu4_2")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["render", "dream"], default=None)
    args = ap.parse_args()

    import jax
    import torch
    import torch_reference as tr

    from jaxviz import dream, models, weights
    from jaxviz.featvis import render as R

    ref = tr.make(args.arch, seed=0)
    for p in ref.parameters():
        p.requires_grad_(False)
    net = models.get(args.arch, classifier=False)
    params = weights.features_only(weights.from_torchvision(ref.state_dict(), args.arch))
    mean, std = ref.mean, ref.std
    print(f"# {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# {args.arch}; median of {args.repeats} runs of {args.steps} steps; ratio = torch time / jaxviz time")
    print(f"{'what':<34}{'jaxviz step/s':>14}{'torch step/s':>14}{'ratio':>8}{'jaxviz 1st call s':>19}")
    rows = []

    def report(what, t_j, t_t, first):
        sj, st = args.steps / t_j, args.steps / t_t
        rows.append((what, t_t / t_j))
        print(f"{what:<34}{sj:>14.2f}{st:>14.2f}{t_t / t_j:>7.2f}x{first:>19.1f}", flush=True)

    import time

    if args.only in (None, "render"):
        layer, size, k = args.render_layer, args.render_size, args.channels
        feats = ref.features[: torch_layer_index(ref, layer)]
        param, transforms = R.fourier(), R.standard_transforms()
        key = jax.random.key(0)
        # sanity: the same objective on the same image (no transforms)
        st = R.render_init(key, size=size, param=param)
        img = param.image(st.variables, (size, size))
        ours = float(R.channel(layer, 3)({layer: net.apply(params, img, taps=(layer,))[layer]}))
        with torch.no_grad():
            theirs = float(feats((tr.to_nchw(np.asarray(img)) - mean) / std)[0, 3].mean())
        print(f"# act-max objective on the same image: jaxviz {ours:.6g}, torch {theirs:.6g}")
        for batch in (1, k):
            chans = list(range(3, 3 + batch))
            if batch == 1:
                obj = R.channel(layer, 3)

                def ours_fn(state=st):
                    s, h = R.render_update(net, params, obj, state, key, steps=args.steps, size=size, param=param,
                                           transforms=transforms, redirect_relu=False)
                    return jax.block_until_ready(s.variables)
            else:
                def ours_fn():
                    out = R.render_channels(net, params, layer, chans, key=key, size=size, steps=args.steps,
                                            param=param, transforms=transforms, redirect_relu=False)
                    return jax.block_until_ready(out)
            t0 = time.perf_counter()
            ours_fn()
            first = time.perf_counter() - t0
            t_j = timeit(ours_fn, repeats=args.repeats, warmup=0)
            loop = TorchActMax(torch, feats, mean, std, size, chans)
            loop.run(1)
            t_t = timeit(lambda: loop.run(args.steps), repeats=args.repeats, warmup=0)
            report(f"act-max {layer} {size}px x{batch}", t_j, t_t, first)

    if args.only in (None, "dream"):
        layer, size = args.dream_layer, args.dream_size
        feats = ref.features[: torch_layer_index(ref, layer)]
        x = np.random.default_rng(0).uniform(0.2, 0.8, size=(1, size, size, 3)).astype(np.float32)
        # sanity: one un-jittered step gives the same image on both sides
        one = dream.dream_step(net, params, x, jax.random.key(0), layers=layer, jitter=0, step_size=0.01)
        one_t = torch_dream_steps(torch, feats, mean, std, tr.to_nchw(x), 1, 0.01, 0, torch.Generator())
        dj, dt = np.asarray(one) - x, tr.to_nhwc(one_t) - x
        err = np.linalg.norm(dj - dt) / np.linalg.norm(dt)
        print(f"# DeepDream: one step from the same image, relative L2 difference of the updates: {err:.1e}")

        def ours_fn():
            return jax.block_until_ready(dream.dream(net, params, x, key=jax.random.key(1), layers=layer, octaves=1,
                                                     steps=args.steps, jitter=32))

        t0 = time.perf_counter()
        ours_fn()
        first = time.perf_counter() - t0
        t_j = timeit(ours_fn, repeats=args.repeats, warmup=0)
        gen = torch.Generator().manual_seed(0)
        xt = tr.to_nchw(x)
        torch_dream_steps(torch, feats, mean, std, xt, 1, 0.01, 32, gen)
        t_t = timeit(lambda: torch_dream_steps(torch, feats, mean, std, xt, args.steps, 0.01, 32, gen),
                     repeats=args.repeats, warmup=0)
        report(f"DeepDream {layer} {size}px", t_j, t_t, first)

    print("# ratios: " + ", ".join(f"{w}: {r:.2f}x" for w, r in rows))


if __name__ == "__main__":
    main()
