"""An independent PyTorch reference of torchvision's VGG, written with torch.nn.

There is no CPU build of torchvision here, so this re-creates
``torchvision.models.vgg`` (configurations "D" and "E") module for module, so
that ``state_dict()`` has torchvision's exact keys (``features.{i}.weight``,
``classifier.{0,3,6}.weight``). ReLUs are not in-place, so Captum's hooks work.
"""

from __future__ import annotations

import torch
from torch import nn

CFGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def stages_to_cfg(stages):
    cfg = []
    for stage in stages:
        cfg += list(stage) + ["M"]
    return cfg


class TorchVGG(nn.Module):
    def __init__(self, cfg, num_classes=1000, fc_features=4096, pool_output=(7, 7), pooling="max"):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_output)
        self.classifier = nn.Sequential(
            nn.Linear(cin * pool_output[0] * pool_output[1], fc_features),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(fc_features, fc_features),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(fc_features, num_classes),
        )
        # torchvision's init scheme
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.normal_(m.bias, 0, 0.05)  # non-zero biases exercise the bias conversion
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.normal_(m.bias, 0, 0.05)
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def forward(self, x, normalize=True):
        """x: (N, 3, H, W) in [0, 1] when normalize, else already normalised."""
        if normalize:
            x = (x - self.mean) / self.std
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)

    def taps(self, x, normalize=True):
        """Every tap by jaxviz name, NCHW tensors."""
        if normalize:
            x = (x - self.mean) / self.std
        out, b, n = {}, 1, 1
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                out[f"conv{b}_{n}"] = x
            elif isinstance(layer, nn.ReLU):
                out[f"relu{b}_{n}"] = x
                n += 1
            else:
                out[f"pool{b}"] = x
                b, n = b + 1, 1
        x = self.avgpool(x)
        out["avgpool"] = x
        x = torch.flatten(x, 1)
        for i, name in ((0, "fc6"), (1, "relu6"), (3, "fc7"), (4, "relu7"), (6, "fc8")):
            x = self.classifier[i](x) if i in (0, 3, 6) else torch.relu(x)
            out[name] = x
        return out


def make(arch="vgg19", seed=0, **kwargs):
    torch.manual_seed(seed)
    cfg = CFGS[arch] if isinstance(arch, str) else stages_to_cfg(arch)
    return TorchVGG(cfg, **kwargs).eval()


def to_nchw(x):
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def to_nhwc(t):
    t = t.detach().numpy()
    return t.transpose(0, 2, 3, 1) if t.ndim == 4 else t


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # torchvision v1.5: stride on the 3x3
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


RESNET_CFGS = {
    "resnet18": (_BasicBlock, (2, 2, 2, 2)),
    "resnet34": (_BasicBlock, (3, 4, 6, 3)),
    "resnet50": (_Bottleneck, (3, 4, 6, 3)),
    "resnet101": (_Bottleneck, (3, 4, 23, 3)),
    "resnet152": (_Bottleneck, (3, 8, 36, 3)),
}


class TorchResNet(nn.Module):
    """torchvision.models.resnet re-created with torch.nn: the same modules, so the same state-dict keys
    (``conv1``, ``bn1``, ``layer{s}.{b}.conv{k}``, ``layer{s}.{b}.downsample.{0,1}``, ``fc``)."""

    def __init__(self, arch="resnet18", num_classes=1000, seed=0):
        super().__init__()
        block, blocks = RESNET_CFGS[arch]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for s, (width, n) in enumerate(zip((64, 128, 256, 512), blocks), 1):
            stride = 1 if s == 1 else 2
            layers = []
            for b in range(n):
                st = stride if b == 0 else 1
                down = None
                if b == 0 and (st != 1 or cin != width * block.expansion):
                    down = nn.Sequential(nn.Conv2d(cin, width * block.expansion, 1, st, bias=False),
                                         nn.BatchNorm2d(width * block.expansion))
                layers.append(block(cin, width, st, down))
                cin = width * block.expansion
            setattr(self, f"layer{s}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            elif isinstance(m, nn.BatchNorm2d):  # trained-looking statistics, so the folding is exercised
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.normal_(0, 0.1, generator=g)
                    m.running_mean.normal_(0, 0.1, generator=g)
                    m.running_var.uniform_(0.5, 2.0, generator=g)
        self.eval()
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def taps(self, x):
        """Every tap by jaxviz name (NCHW tensors), and the logits as ``fc``."""
        x = (x - self.mean) / self.std
        out = {}
        x = self.bn1(self.conv1(x))
        out["conv1"] = x
        x = self.relu(x)
        out["relu"] = x
        x = self.maxpool(x)
        out["maxpool"] = x
        for s in range(1, 5):
            for b, block in enumerate(getattr(self, f"layer{s}")):
                x = block(x)
                out[f"layer{s}/{b}"] = x
        x = torch.flatten(self.avgpool(x), 1)
        out["avgpool"] = x
        out["fc"] = self.fc(x)
        return out

    def forward(self, x):
        return self.taps(x)["fc"]


class Normalised(nn.Module):
    """A :class:`TorchVGG` that takes the normalised image: zennit's users normalise outside the model (and give
    it the normalised bounds), so its relevance is that of the normalised image."""

    def __init__(self, vgg):
        super().__init__()
        self.m = vgg

    def forward(self, x):
        return self.m(x, normalize=False)


def zennit_composite(name, low, high, **kwargs):
    """zennit's composite for a jaxviz composite name (``attribution.propagation.COMPOSITES``); ``low``/``high``
    are EpsilonGammaBox's (normalised) bounds; ``kwargs`` go to the composite (e.g. ``canonizers``)."""
    import zennit.composites as zc

    if name == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=low, high=high, **kwargs)
    return {"epsilon_plus": zc.EpsilonPlus, "epsilon_plus_flat": zc.EpsilonPlusFlat,
            "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
            "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat}[name](**kwargs)
