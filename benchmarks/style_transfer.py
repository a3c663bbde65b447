"""Style transfer, jaxviz vs a PyTorch loop written like the PyTorch neural-style tutorial.

Same process, same random VGG19 weights (tests/torch_reference.py's torch model, converted with
``weights.from_torchvision``), same images, same objective (content relu4_2; style relu1_1..relu5_1
at 0.2 each, Gram / (C H W) with mean squared errors, content MSE; content weight 1, style weight
5e6: the ``gatys`` preset), pixels clamped to [0, 1].

Two measurements:

1. time per step with Adam (lr 0.02), the same algorithm on both sides: one forward + backward per
   step. jaxviz is compiled first (not timed); both sides warm up for one step.
2. loss reached after equal wall-clock time with L-BFGS: jaxviz's ``optax.lbfgs`` (memory 10, zoom
   line search) against ``torch.optim.LBFGS`` as the tutorial uses it (``optimizer.step(closure)``
   with the in-place clamp, defaults lr=1, max_iter=20, history 100, no line search) and, closer
   to optax, with ``line_search_fn="strong_wolfe"``, history 10.

torch keeps its default thread count. Run: ``python benchmarks/style_transfer.py [--size 128]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import torch_reference  # noqa: E402

from jaxviz import models, style, weights  # noqa: E402

CONTENT_LAYERS = ["relu4_2"]
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
LAYER_WEIGHT = 0.2
CONTENT_WEIGHT, STYLE_WEIGHT = 1.0, 5e6


def make_images(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'photo' and a high-frequency 'painting', (1, size, size, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    content = np.stack([0.5 + 0.4 * np.sin(3 * x + 1), 0.5 + 0.4 * np.cos(4 * y), x * y], -1)
    content = np.clip(content + 0.03 * rng.normal(size=content.shape), 0, 1)
    stripes = 0.5 + 0.5 * np.sin(40 * (x + 0.3 * y))[..., None] * np.array([1.0, -0.6, 0.3])
    painting = np.clip(stripes + 0.1 * rng.normal(size=stripes.shape), 0, 1)
    return content[None].astype(np.float32), painting[None].astype(np.float32)


# --------------------------------------------------------------------------- PyTorch, as in the tutorial


def gram_matrix(input):
    a, b, c, d = input.size()
    features = input.view(a * b, c * d)
    G = torch.mm(features, features.t())
    return G.div(a * b * c * d)


class ContentLoss(nn.Module):
    def __init__(self, target):
        super().__init__()
        self.target = target.detach()

    def forward(self, input):
        self.loss = nn.functional.mse_loss(input, self.target)
        return input


class StyleLoss(nn.Module):
    def __init__(self, target_feature):
        super().__init__()
        self.target = gram_matrix(target_feature).detach()

    def forward(self, input):
        G = gram_matrix(input)
        self.loss = nn.functional.mse_loss(G, self.target)
        return input


class Normalization(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def forward(self, img):
        return (img - self.mean) / self.std


def get_style_model_and_losses(cnn, style_img, content_img):
    normalization = Normalization(models.IMAGENET_MEAN, models.IMAGENET_STD)
    content_losses, style_losses = [], []
    model = nn.Sequential(normalization)
    b, n = 1, 0
    for layer in cnn.children():
        if isinstance(layer, nn.Conv2d):
            n += 1
            name = f"conv{b}_{n}"
        elif isinstance(layer, nn.ReLU):
            name = f"relu{b}_{n}"
            layer = nn.ReLU(inplace=False)
        elif isinstance(layer, nn.MaxPool2d):
            name = f"pool{b}"
            b, n = b + 1, 0
        model.add_module(name, layer)
        if name in CONTENT_LAYERS:
            target = model(content_img).detach()
            content_loss = ContentLoss(target)
            model.add_module(f"content_loss_{name}", content_loss)
            content_losses.append(content_loss)
        if name in STYLE_LAYERS:
            target_feature = model(style_img).detach()
            style_loss = StyleLoss(target_feature)
            model.add_module(f"style_loss_{name}", style_loss)
            style_losses.append(style_loss)
    # trim off the layers after the last loss
    for i in range(len(model) - 1, -1, -1):
        if isinstance(model[i], (ContentLoss, StyleLoss)):
            break
    model = model[: i + 1]
    # as in the tutorial: optimise the input, not the model parameters
    model.eval()
    model.requires_grad_(False)
    return model, style_losses, content_losses


def torch_objective(model, style_losses, content_losses, input_img):
    model(input_img)
    style_score = sum(LAYER_WEIGHT * sl.loss for sl in style_losses)
    content_score = sum(cl.loss for cl in content_losses)
    return STYLE_WEIGHT * style_score + CONTENT_WEIGHT * content_score


class TorchAdam:
    """The tutorial's loop with Adam instead of L-BFGS: one step per call."""

    def __init__(self, setup, content_img):
        self.model, self.sls, self.cls = setup
        self.input_img = content_img.clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.input_img], lr=0.02)

    def step(self):
        self.optimizer.zero_grad()
        loss = torch_objective(self.model, self.sls, self.cls, self.input_img)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.input_img.clamp_(0, 1)
        return float(loss.detach())


class _OutOfTime(Exception):
    pass


def torch_lbfgs(setup, content_img, budget, **lbfgs_kw):
    """The tutorial's run_style_transfer loop, stopped by wall-clock instead of step count.

    The closure raises once the budget is spent (one ``optimizer.step`` runs up to 20
    evaluations); the result is the lowest loss any evaluation within the budget saw
    (generous to torch: a line search's rejected trial points are not held against it).
    """
    model, sls, cls = setup
    input_img = content_img.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([input_img], **lbfgs_kw)
    run, best = [0], [float("inf")]
    start = time.perf_counter()

    def closure():
        if time.perf_counter() - start >= budget:
            raise _OutOfTime
        with torch.no_grad():
            input_img.clamp_(0, 1)
        optimizer.zero_grad()
        loss = torch_objective(model, sls, cls, input_img)
        loss.backward()
        run[0] += 1
        best[0] = min(best[0], float(loss.detach()))
        return loss

    try:
        while True:
            optimizer.step(closure)
    except _OutOfTime:
        pass
    return best[0], run[0], time.perf_counter() - start


# --------------------------------------------------------------------------- jaxviz


def jax_state(net, params, content, style_img, **kw):
    return style.init(
        net,
        params,
        content,
        style_img,
        preset="gatys",
        content_layers=CONTENT_LAYERS,
        style_layers=[(n, LAYER_WEIGHT) for n in STYLE_LAYERS],
        content_weight=CONTENT_WEIGHT,
        style_weight=STYLE_WEIGHT,
        **kw,
    )


def jax_budget(net, params, state, budget):
    """Whole L-BFGS steps that finish within the budget (a step that overruns it is dropped)."""
    start, steps = time.perf_counter(), 0
    while True:
        new, _ = style.update(net, params, state)
        jax.block_until_ready(new.image)
        if time.perf_counter() - start > budget:
            return state, steps, budget
        state, steps = new, steps + 1


def memory(size: int, remat: bool) -> None:
    """Peak memory of one Adam step at size x size on VGG19 (run it in a fresh process)."""
    import resource

    net = models.vgg19(classifier=False)
    params = weights.random(net, seed=0)
    content_np, style_np = make_images(size)
    state = jax_state(net, params, jnp.asarray(content_np), jnp.asarray(style_np), optimizer="adam",
                      learning_rate=0.02, remat=remat)
    jax.block_until_ready(state.image)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    compiled = style.objective._update_jit.lower(net, params, state.replace(config=style.objective._step_key(state.config))).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**30
    t = time.perf_counter()
    state, l = style.update(net, params, state)
    jax.block_until_ready(state.image)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"memory {size}x{size} remat={remat} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}: "
          f"XLA temp estimate {temp:.2f} GiB, peak RSS {peak:.2f} GiB (after init {before:.2f} GiB), "
          f"first update call {dt:.0f} s, loss {float(l.total[0]):.4g}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--memory", type=int, default=None, metavar="SIZE",
                    help="instead: peak memory of one VGG19 Adam step at SIZE x SIZE (fresh process)")
    ap.add_argument("--remat", action="store_true", help="with --memory: remat=True")
    ap.add_argument("--size", type=int, default=128, help="image side in px (default %(default)s)")
    ap.add_argument("--steps", type=int, default=5, help="timed Adam steps per side (default %(default)s)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of L-BFGS per side (default: 25 torch Adam steps' time)")
    ap.add_argument("--skip-lbfgs", action="store_true")
    args = ap.parse_args(argv)
    if args.memory:
        return memory(args.memory, args.remat)

    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"(threads {torch.get_num_threads()}), {os.cpu_count()} CPUs, size {args.size}x{args.size}")
    content_np, style_np = make_images(args.size)
    ref = torch_reference.make("vgg19", seed=0, num_classes=10, fc_features=32, pool_output=(1, 1))
    full = models.vgg19(num_classes=10, fc_features=32, pool_output=(1, 1))
    params = weights.features_only(weights.from_torchvision(ref.state_dict(), full))
    net = models.vgg19(classifier=False)

    content_t = torch_reference.to_nchw(content_np)
    style_t = torch_reference.to_nchw(style_np)
    with torch.no_grad():
        setup = get_style_model_and_losses(ref.features, style_t, content_t)
    content, style_img = jnp.asarray(content_np), jnp.asarray(style_np)

    # parity: the two objectives agree on the same image
    probe_np = np.clip(content_np + 0.1 * np.random.default_rng(1).normal(size=content_np.shape), 0, 1).astype(np.float32)
    with torch.no_grad():
        lt = float(torch_objective(*setup, torch_reference.to_nchw(probe_np)))
    probe = jax_state(net, params, content, style_img, optimizer="adam", learning_rate=0.02, init_image=probe_np)
    lj = float(style.evaluate(net, params, probe).total[0])
    print(f"objective parity on one image: jaxviz {lj:.6g}  torch {lt:.6g}  rel.diff {abs(lj - lt) / abs(lt):.1e}")

    # 1. Adam: time per step
    state = jax_state(net, params, content, style_img, optimizer="adam", learning_rate=0.02)
    t = time.perf_counter()
    state, _ = style.update(net, params, state)
    jax.block_until_ready(state.image)
    print(f"jaxviz compile + first step: {time.perf_counter() - t:.1f} s")
    peer = TorchAdam(setup, content_t)
    peer.step()  # warm-up
    jt, tt = [], []
    for _ in range(args.steps):  # interleaved, so both sides see the same load on a shared CPU
        t = time.perf_counter()
        state, lj_ = style.update(net, params, state)
        jax.block_until_ready(state.image)
        jt.append(time.perf_counter() - t)
        t = time.perf_counter()
        lt_ = peer.step()
        tt.append(time.perf_counter() - t)
    jm, tm = float(np.median(jt)), float(np.median(tt))
    print(f"Adam, {args.steps} interleaved steps: jaxviz {jm:.3f} s/step, torch {tm:.3f} s/step (median; "
          f"min {min(jt):.3f} vs {min(tt):.3f}) -> jaxviz is {tm / jm:.2f}x faster per step "
          f"(last losses {float(lj_.total[0]):.6g} vs {lt_:.6g})")

    if args.skip_lbfgs:
        return
    # 2. L-BFGS at equal wall-clock time
    budget = args.budget or 25 * tm
    s0 = jax_state(net, params, content, style_img)
    t = time.perf_counter()
    s1, _ = style.update(net, params, s0)
    jax.block_until_ready(s1.image)
    print(f"jaxviz L-BFGS compile + first step: {time.perf_counter() - t:.1f} s; budget {budget:.1f} s per side")
    sj, nj, tj = jax_budget(net, params, s0, budget)
    loss_j = float(style.evaluate(net, params, sj).total[0])
    print(f"L-BFGS jaxviz (optax, memory 10, zoom line search): {nj} steps in {budget:.1f} s, loss {loss_j:.6g}")
    for label, kw in (
        ("torch tutorial (lr=1, max_iter=20, history 100, no line search)", {}),
        ("torch strong_wolfe, history 10", dict(line_search_fn="strong_wolfe", history_size=10)),
    ):
        loss_t, evals, tt_ = torch_lbfgs(setup, content_t, budget, **kw)
        print(f"L-BFGS {label}: {evals} evaluations in {budget:.1f} s, best loss {loss_t:.6g} "
              f"-> jaxviz's loss is {loss_t / max(loss_j, 1e-30):.2f}x lower")


if __name__ == "__main__":
    main()
