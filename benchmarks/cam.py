"""The CAM family: jaxviz vs pytorch-grad-cam 1.5 on the same VGG16 weights and images, same process.

    python benchmarks/cam.py                                   # VGG16, 224 px, relu5_3, every method
    python benchmarks/cam.py --methods ablation_cam,score_cam --size 112 --repeats 1      # quick

Both sides get the same torchvision-layout weights (tests/torch_reference.py -> weights.from_torchvision) and
produce pytorch-grad-cam's maps (jaxviz with ``normalize=True, upsample=True``); the relative L2 difference of
the maps is printed beside the times. jaxviz's first call (trace + compile) is timed separately; then each side
runs ``--repeats`` times and the median wall time is reported, with the ratio pytorch-grad-cam / jaxviz (> 1:
jaxviz is faster). Eigen methods differ in the sign LAPACK picks for pytorch-grad-cam (see jaxviz.attribution.cams);
their difference column can show it.

pytorch-grad-cam is installed with ``pip install --no-deps grad-cam==1.5.7``; it imports torchvision, for which
this program (like the tests) falls back to tests/stand_ins/ when it is missing.

The row "road" times ROAD on the Grad-CAM map (jaxviz's metrics.road against pytorch-grad-cam's ROADCombined,
9 percentiles, both orders, noise 0.01, softmax scores); its difference column compares the two with the
imputation noise set to 0 on both sides (one more pytorch-grad-cam run, not timed).

Goals (issue 19): Ablation-CAM >= 10x pytorch-grad-cam at 224 px on relu5_3, Score-CAM >= 1.5x, the gradient
CAMs at least parity, ROAD >= 3x.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np

from _common import machine  # also puts tests/ on sys.path

PEERS = {
    "grad_cam": "GradCAM", "grad_cam_plus_plus": "GradCAMPlusPlus", "xgrad_cam": "XGradCAM",
    "hires_cam": "HiResCAM", "grad_cam_elementwise": "GradCAMElementWise", "layer_cam": "LayerCAM",
    "eigen_cam": "EigenCAM", "eigen_grad_cam": "EigenGradCAM", "score_cam": "ScoreCAM",
    "ablation_cam": "AblationCAM",
}
GOALS = {"ablation_cam": 10.0, "score_cam": 1.5, "road": 3.0}


def wall(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--layer", default="relu5_3")
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--methods", default=",".join(list(PEERS) + ["road"]))
    ap.add_argument("--batch", type=int, default=32, help="Score-CAM / Ablation-CAM batch_size (both sides)")
    ap.add_argument("--road-batch", type=int, default=8, help="ROAD's batch_size (metrics.road's default)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    if importlib.util.find_spec("torchvision") is None:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "stand_ins"))
    import jax
    import jax.numpy as jnp
    import pytorch_grad_cam as pgc
    import torch
    import torch_reference as tr
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from jaxviz import attribution as A
    from jaxviz import models, weights

    net = models.get(args.arch)
    ref = tr.make(args.arch, seed=0)
    params = weights.from_torchvision(ref.state_dict(), net)
    names = [n for n in net.layers if n.startswith(("conv", "relu", "pool"))]
    index = names.index(args.layer)  # torchvision's features index of the tap
    x = np.random.RandomState(0).rand(args.images, args.size, args.size, 3).astype(np.float32)
    xj, xt = jnp.asarray(x), tr.to_nchw(x)
    targets = [ClassifierOutputTarget(3)] * args.images
    print(f"{machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}")
    print(f"{args.arch} {args.size} px at {args.layer}, {args.images} image(s), batch {args.batch}, "
          f"median of {args.repeats}")
    print(f"{'method':22s} {'compile s':>9s} {'jaxviz s':>9s} {'pgc s':>9s} {'ratio':>7s} {'rel L2':>8s}  goal")
    for name in args.methods.split(","):
        if name == "road":
            road_row(args, net, params, ref, xj, xt)
            continue

        def ours():
            return jax.block_until_ready(A.cam_map(name, net, params, xj, 3, layer=args.layer, normalize=True,
                                                   upsample=True, batch_size=args.batch))

        t = time.perf_counter()
        got = np.asarray(ours())
        first = time.perf_counter() - t
        mine = wall(ours, args.repeats)
        extra = {"batch_size": args.batch} if name == "ablation_cam" else {}
        cam = getattr(pgc, PEERS[name])(model=ref, target_layers=[ref.features[index]], **extra)
        if name == "score_cam":
            cam.batch_size = args.batch

        def theirs():
            return cam(input_tensor=xt, targets=targets)

        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):  # pytorch-grad-cam's tqdm bars
            want = theirs()
            peer = wall(theirs, args.repeats)
        err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
        ratio = peer / mine
        goal = GOALS.get(name, 1.0)
        verdict = f">= {goal:g}x: {'met' if ratio >= goal else 'NOT met'}"
        print(f"{name:22s} {first:9.2f} {mine:9.3f} {peer:9.3f} {ratio:6.2f}x {err:8.1e}  {verdict}")


def road_row(args, net, params, ref, xj, xt) -> None:
    import contextlib
    import io

    import jax
    from pytorch_grad_cam.metrics import perturbation_confidence as pc
    from pytorch_grad_cam.metrics import road as pgc_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from jaxviz import attribution as A
    from jaxviz.attribution import metrics

    heat = np.asarray(A.cam_map("grad_cam", net, params, xj, 3, layer=args.layer, normalize=True, upsample=True))
    targets = [ClassifierOutputSoftmaxTarget(3)] * len(heat)

    def ours():
        return jax.block_until_ready(metrics.road(net, params, xj, 3, heat, batch_size=args.road_batch).combined)

    t = time.perf_counter()
    ours()
    first = time.perf_counter() - t
    mine = wall(ours, args.repeats)
    combined = pgc_road.ROADCombined()

    def theirs():
        return combined(xt, heat, targets, ref)

    with contextlib.redirect_stderr(io.StringIO()):
        theirs()
        peer = wall(theirs, args.repeats)
    # the difference without noise: pytorch-grad-cam's per-percentile metrics with its imputer's noise at 0
    want = []
    for cls in (pc.RemoveLeastRelevantFirst, pc.RemoveMostRelevantFirst):
        want.append(np.mean([pc.PerturbationConfidenceMetric(cls(p, pgc_road.NoisyLinearImputer(noise=0.0)))(
            xt, heat, targets, ref) for p in (10, 20, 30, 40, 50, 60, 70, 80, 90)], axis=0))
    want = (want[0] - want[1]) / 2
    got = np.asarray(metrics.road(net, params, xj, 3, heat, noise=0.0, batch_size=args.road_batch).combined)
    err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
    ratio = peer / mine
    goal = GOALS["road"]
    verdict = f">= {goal:g}x: {'met' if ratio >= goal else 'NOT met'}"
    print(f"{'road':22s} {first:9.2f} {mine:9.3f} {peer:9.3f} {ratio:6.2f}x {err:8.1e}  {verdict}")


if __name__ == "__main__":
    main()
