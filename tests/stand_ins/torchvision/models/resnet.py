"""The two ResNet block classes zennit's canonizers import by name (``zennit.torchvision``).

zennit only uses them in ``isinstance`` checks; a test that canonizes a ResNet points zennit at its own
reference blocks (tests/torch_reference.py), which have torchvision's attribute names.
"""

import torch


class BasicBlock(torch.nn.Module):
    expansion = 1


class Bottleneck(torch.nn.Module):
    expansion = 4
