import os
import sys

# tests/ on the path for the shared torch reference model (tests/torch_reference.py)
sys.path.insert(0, os.path.dirname(__file__))

# In-process CLI runs must not point this test process's JAX at a persistent compilation cache (the
# ``attribute`` command does by default); the test that checks the cache runs the CLI in a subprocess.
os.environ["JAXVIZ_COMPILE_CACHE"] = "0"
