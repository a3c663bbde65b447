import os
import sys

# tests/ on the path for the shared torch reference model (tests/torch_reference.py)
sys.path.insert(0, os.path.dirname(__file__))
