"""A minimal `torchvision` for running pytorch-fid's and lpips' own code, since torchvision does not import beside our
torch.

pytorch-fid needs only `torchvision.__version__`, `models.inception_v3` and the block classes of
`models.inception` (it subclasses InceptionA/C/E and overrides their forward; Mixed_6a/7a keep torchvision's
InceptionB/D forward), and `transforms.ToTensor`. The classes below have torchvision's module names and shapes
(hence its state_dict keys), and B/D its forward, which is all pytorch-fid touches.

The `lpips` package needs `models.vgg16(pretrained=...).features`: torchvision's layer list for configuration "D"
(13 convs + ReLUs, a max-pool after each block: 31 modules, the same indices and so the same state_dict keys). The
stand-in has no weights (pretrained must be false: pass lpips.LPIPS(pnet_rand=True) and load a trunk) and no
classifier (lpips never touches it; its 120 M parameters would only slow the tests).
"""

import sys
import types

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class BasicConv2d(nn.Module):

  def __init__(self, in_channels, out_channels, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):

  def __init__(self, in_channels, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)


class InceptionB(nn.Module):

  def __init__(self, in_channels):
    super().__init__()
    self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):

  def __init__(self, in_channels, channels_7x7):
    super().__init__()
    c7 = channels_7x7
    self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)


class InceptionD(nn.Module):

  def __init__(self, in_channels):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):

  def __init__(self, in_channels):
    super().__init__()
    self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)


class Inception3(nn.Module):
  """torchvision's Inception3 without the aux classifier (pytorch-fid asks for aux_logits=False)."""

  def __init__(self, num_classes=1000, aux_logits=False, init_weights=None):
    super().__init__()
    del init_weights
    assert not aux_logits
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
    self.Mixed_5b = InceptionA(192, pool_features=32)
    self.Mixed_5c = InceptionA(256, pool_features=64)
    self.Mixed_5d = InceptionA(288, pool_features=64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = InceptionC(768, channels_7x7=128)
    self.Mixed_6c = InceptionC(768, channels_7x7=160)
    self.Mixed_6d = InceptionC(768, channels_7x7=160)
    self.Mixed_6e = InceptionC(768, channels_7x7=192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = InceptionE(1280)
    self.Mixed_7c = InceptionE(2048)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.dropout = nn.Dropout()
    self.fc = nn.Linear(2048, num_classes)


def inception_v3(*, weights=None, **kwargs):
  assert weights is None, "the stand-in has no pretrained weights"
  return Inception3(**kwargs)


# torchvision.models.vgg cfgs["D"]: the width of each 3x3 conv (+ ReLU), "M" a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
  """torchvision's VGG, features only."""

  def __init__(self, cfg=VGG16_CFG):
    super().__init__()
    layers, channels = [], 3
    for v in cfg:
      if v == "M":
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        channels = v
    self.features = nn.Sequential(*layers)


def vgg16(*, pretrained=False, weights=None, **kwargs):
  assert not pretrained and weights is None, "the stand-in has no pretrained weights"
  assert not kwargs, kwargs
  return VGG()


class ToTensor:
  """torchvision.transforms.ToTensor for PIL RGB images: CHW float32 in [0, 1]."""

  def __call__(self, image):
    return torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1).float().div(255)


def modules() -> dict[str, types.ModuleType]:
  """{"torchvision": ..., "torchvision.models": ..., ...}, to put into sys.modules (e.g. monkeypatch.setitem)."""
  torchvision = types.ModuleType("torchvision")
  torchvision.__version__ = "0.28.0"
  models = types.ModuleType("torchvision.models")
  inception = types.ModuleType("torchvision.models.inception")
  this = sys.modules[__name__]
  for name in ("BasicConv2d", "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "Inception3"):
    setattr(inception, name, getattr(this, name))
  models.inception, models.inception_v3 = inception, inception_v3
  models.vgg16 = vgg16
  transforms = types.ModuleType("torchvision.transforms")
  transforms.ToTensor = ToTensor
  torchvision.models, torchvision.transforms = models, transforms
  return {"torchvision": torchvision, "torchvision.models": models, "torchvision.models.inception": inception,
          "torchvision.transforms": transforms}
