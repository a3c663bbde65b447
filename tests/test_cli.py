"""The jaxviz command: info, convert, classify, and one-line errors."""

import json
import os

import numpy as np
import pytest

from jaxviz import cli, image, models, weights

torch = pytest.importorskip("torch")
import torch_reference as tr  # noqa: E402


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_lists_backend_devices_and_cache(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path))
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert "backend: cpu" in out and "device 0:" in out
    assert f"XLA_FLAGS: {os.environ.get('XLA_FLAGS') or '(none)'} (see jaxviz/_xla_flags.py" in out
    assert f"weight cache: {tmp_path}" in out
    assert "vgg19: not cached (weights.load downloads https://download.pytorch.org/models/vgg19-dcbb9e9d.pth)" in out
    assert "small-cnn: not trained yet (jaxviz demo trains it" in out
    # the demo's model, as small_cnn_run leaves it in the cache
    from jaxviz import train

    path = train.cache_path(train.Config())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    path.with_suffix(".json").write_text(json.dumps({"accuracy": 0.975}))
    code, out, _ = run(capsys, "info")
    assert f"small-cnn: trained, held-out accuracy 97.5% (small_cnn/{path.name})" in out


def test_convert_into_the_cache_then_load_finds_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "cache"))
    ref = tr.make("vgg16", seed=0)
    state = {k: v for k, v in ref.state_dict().items() if k.startswith("features")}  # 58 MB, not 528
    src = tmp_path / "vgg16-features.pth"
    torch.save(state, src)
    code, out, _ = run(capsys, "convert", str(src), "--arch", "vgg16")
    assert code == 0 and "14,714,688 parameters" in out
    params = weights.load("vgg16", download=False)
    np.testing.assert_array_equal(params["params"]["conv1_1"]["kernel"], state["features.0.weight"].numpy().transpose(2, 3, 1, 0))
    code, out, _ = run(capsys, "convert", str(src), "--arch", "vgg16")
    assert code == 0 and "exists; kept it (use --overwrite to replace it)" in out
    # known before converting: the file is not even read
    monkeypatch.setattr(weights, "from_torchvision", lambda *a, **k: pytest.fail("converted a file it keeps"))
    code, out, _ = run(capsys, "convert", str(src), "--arch", "vgg16")
    assert code == 0 and "exists; kept it" in out
    monkeypatch.undo()
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "cache"))
    state["features.0.bias"] += 1
    torch.save(state, src)
    code, out, _ = run(capsys, "convert", str(src), "--arch", "vgg16", "--overwrite")
    assert code == 0 and "14,714,688 parameters" in out
    again = weights.load("vgg16", download=False)
    np.testing.assert_array_equal(again["params"]["conv1_1"]["bias"], state["features.0.bias"].numpy())
    code, out, _ = run(capsys, "info")
    assert "vgg16: converted (vgg16-397923af.jaxviz.safetensors)" in out


def test_classify_prints_top5_with_imagenet_names(capsys, tmp_path):
    yy, xx = np.mgrid[0:64, 0:80] / 64.0
    pic = np.stack([yy, xx / 1.25, 0.5 + 0 * yy], -1).astype(np.float32)
    path = image.save(pic, tmp_path / "gradient.png")
    code, out, err = run(capsys, "classify", str(path), "--weights", "random", "--arch", "vgg16", "--top", "3")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == f"{path}:" and len(lines) == 4
    # the same numbers through the library
    net = models.vgg16()
    logits = np.asarray(net.apply(weights.random(net, seed=0), image.imagenet_eval(path)))[0]
    top = np.argsort(-logits)[:3]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    from jaxviz.commands._common import imagenet_classes

    for line, k in zip(lines[1:], top):
        assert line.split()[1] == str(k) and line.endswith(imagenet_classes()[k])
        shown = next(w for w in line.split() if w.endswith("%"))
        assert float(shown[:-1]) == pytest.approx(100 * probs[k], abs=0.006)  # printed to 2 decimals
    assert "random weights" in err


def test_errors_are_one_line_and_nonzero(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("JAXVIZ_OFFLINE", "1")
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    code, out, err = run(capsys, "classify", str(not_image), "--weights", "random", "--arch", "vgg16")
    assert code == 1 and err.count("\n") == 1 and "notes.txt" in err and "Traceback" not in err
    code, _, err = run(capsys, "classify", str(not_image), "--arch", "vgg16")
    assert code == 1 and err.startswith("jaxviz classify: error: no pretrained weights for vgg16") and err.count("\n") == 1
    code, _, err = run(capsys, "classify", str(not_image), "--weights", "nope.pth")
    assert code == 2 and "--weights: expected 'pretrained', 'random' or an existing file, got 'nope.pth'" in err
    code, _, err = run(capsys, "convert", str(tmp_path / "missing.pth"))
    assert code == 1 and "missing.pth: no such file" in err
    # a jaxviz file of another model, whose name looks like torchvision's hash-carrying ones: the architecture is
    # what is wrong (not a checksum)
    import jax
    import jax.numpy as jnp

    from jaxviz.models.small_cnn import small_cnn

    other = weights.save(small_cnn(num_classes=4).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))),
                         tmp_path / "shapes-beb846561554.safetensors")
    code, _, err = run(capsys, "classify", str(not_image), "--arch", "vgg16", "--weights", str(other))
    assert code == 1 and err == f"jaxviz classify: error: {other}: wrong architecture: no conv1_1 for vgg16\n"


def test_imagenet_class_names_are_torchvisions():
    from jaxviz.commands._common import imagenet_classes

    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever" and names[999] == "toilet tissue"


def test_out_of_memory_and_early_interrupts_are_one_line(capsys, monkeypatch):
    from jaxviz.commands import core

    def huge(args):
        raise MemoryError("Unable to allocate 6.98 TiB for an array")

    monkeypatch.setattr(core, "info", huge)
    code, _, err = run(capsys, "info")  # the parser binds func when it is built: rebuilt here with the patch
    assert code == 1 and err == ("jaxviz info: error: out of memory (Unable to allocate 6.98 TiB for an array); "
                                 "try smaller sizes or batches\n")

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    code, _, err = run(capsys, "info")
    assert code == 130 and err == "jaxviz: interrupted\n"


def test_sigterm_cleans_up_like_ctrl_c_and_exits_143(capsys, monkeypatch, tmp_path):
    """kill / timeout / docker stop send SIGTERM: the same clean-up as Ctrl-C runs (a half-written output's
    temporary file is removed), one line is printed, and the exit code is 128 + 15."""
    import signal
    import time

    from jaxviz._io import atomic_open
    from jaxviz.commands import core

    slept = []

    def killed_while_writing(args):
        with atomic_open(tmp_path / "out.bin", "wb") as f:
            f.write(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, at once
            slept.append(True)  # never reached: the outcome, not a wall-clock bound, says "at once"
        return 0

    monkeypatch.setattr(core, "info", killed_while_writing)
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = run(capsys, "info")
    assert code == 143 and err == "jaxviz: terminated\n" and slept == []
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary file
    assert signal.getsignal(signal.SIGTERM) is before  # main() leaves the process's handler as it found it


def test_commands_that_keep_progress_say_a_rerun_resumes():
    """The Ctrl-C line promises a resume only for commands that keep their progress (checkpoints, finished
    files, a cached model); the demo trains and caches its model and keeps finished pictures."""
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    keeps = {name for name, p in sub.choices.items() if p.get_default("resumable")}
    assert keeps == {"attribute", "demo", "dream", "embed", "neighbours", "render", "stylize", "top-patches"}
