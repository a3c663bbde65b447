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
