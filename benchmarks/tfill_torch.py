r"""Times the original: lyndonzheng/TFill's own coarse-stage training iteration (TC model), torch on CPU.

  python benchmarks/tfill_torch.py --tfill_repo PATH/TO/TFill [--batch_size 2] [--fine_size 512] [--fixed_size 256]
      [--steps 5] [--threads 2]

Compared with `python benchmarks/train_step.py --config configs/tfill.py --config.batch_size=2 --input_batches 0`
(the coarse stage: 512 px data, networks at 256 px). A checkout at e05bc6b: `git -C TFill.git worktree add
/tmp/TFill e05bc6b` (or `git archive e05bc6b model options util | tar -x -C /tmp/TFill`).

The model is the checkout's own: its TrainOptions parse scripts/train.sh's CelebA-HQ options (--model tc
--coarse_or_refine coarse --netT original --n_encoders 12 --n_decoders 0 --netD style --load_size 542
--fine_size 512 --attn_G --add_noise; ngf 32, embed 512, fixed 256, lr 1e-4, Adam (0.5, 0.9), LPIPS weights
model/lpips/vgg.pth) with --gpu_ids -1 and --batch_size from the flag; `create_model`, `setup` and
`parallelize` as train.py calls them. The timed iteration is train.py's loop body: `set_input(data)` then
`optimize_parameters()` (forward, D step on detached fakes, G step with GAN + L1 + LPIPS), in train mode as
train.py leaves it (so LPIPS's lin-layer dropout is active, as in the original), on random data shaped as the
data loader's: img_org (B, 3, fine, fine) and img (B, 3, fixed, fixed) in [0, 1], a 0/1 mask (B, 1, fine, fine)
with a box hole.

Stand-ins, installed in sys.modules before the checkout is imported:
  - model/stylegan_ops/fused_act.py and upfirdn2d.py build CUDA extensions with torch.utils.cpp_extension.load
    at import. They are replaced by modules with the same names written in plain torch: `upfirdn2d` runs the
    checkout's own `upfirdn2d_native` (taken from its upfirdn2d.py source) on the (B*C, H, W, 1) view the CUDA
    wrapper gives its kernel, and `fused_leaky_relu` / `FusedLeakyReLU` are leaky_relu(x + bias, 0.2) * sqrt 2
    (rosinality's CPU fallback), autograd through both by torch.
  - torchvision (torch 2.13's CPU wheel has no matching torchvision here): `models.vgg16(pretrained=True)` for the
    LPIPS trunk returns VGG16's `features` layers with torch's default initialisation (nothing downloads; the
    values of the weights do not change the work).
Installed with pip for the checkout's imports (not in requirements*.txt): imageio (util/util.py); einops
(transformer_function.py, base_function.py) is already there.
"""

import argparse
import ast
import contextlib
import io
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import types


def _native_upfirdn2d(repo: str):
  """The checkout's own `upfirdn2d_native` (model/stylegan_ops/upfirdn2d.py), compiled without the module's
  CUDA build."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  path = os.path.join(repo, "model", "stylegan_ops", "upfirdn2d.py")
  with open(path) as f:
    source = f.read()
  tree = ast.parse(source)
  node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upfirdn2d_native"), None)
  if node is None:
    raise SystemExit(f"{path} has no upfirdn2d_native: is --tfill_repo lyndonzheng/TFill?")
  namespace = {"torch": torch, "F": F}
  exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), namespace)  # pylint: disable=exec-used
  return namespace["upfirdn2d_native"]


def _stylegan_ops_shims(repo: str) -> dict[str, types.ModuleType]:
  """model.stylegan_ops.fused_act and .upfirdn2d in plain torch (the names style_function.py imports)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  native = _native_upfirdn2d(repo)

  def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    # As UpFirDn2d.forward: one channel per row, pad (x0, x1, y0, y1) = (pad[0], pad[1], pad[0], pad[1]).
    _, channels, height, width = x.shape
    out = native(x.reshape(-1, height, width, 1), kernel, up, up, down, down, pad[0], pad[1], pad[0], pad[1])
    return out.reshape(-1, channels, out.shape[1], out.shape[2])

  def fused_leaky_relu(x, bias, negative_slope=0.2, scale=2 ** 0.5):
    return F.leaky_relu(x + bias.view(1, -1, *[1] * (x.ndim - 2)), negative_slope) * scale

  class FusedLeakyReLU(nn.Module):
    def __init__(self, channel, negative_slope=0.2, scale=2 ** 0.5):
      super().__init__()
      self.bias = nn.Parameter(torch.zeros(channel))
      self.negative_slope, self.scale = negative_slope, scale

    def forward(self, x):
      return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)

  fused_act = types.ModuleType("model.stylegan_ops.fused_act")
  fused_act.fused_leaky_relu, fused_act.FusedLeakyReLU = fused_leaky_relu, FusedLeakyReLU
  upfirdn = types.ModuleType("model.stylegan_ops.upfirdn2d")
  upfirdn.upfirdn2d, upfirdn.upfirdn2d_native = upfirdn2d, native
  return {"model.stylegan_ops.fused_act": fused_act, "model.stylegan_ops.upfirdn2d": upfirdn}


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
  """torchvision.models.vgg16 -> an object whose `features` are VGG16's 31 layers (torch's default init)."""
  from torch import nn  # pylint: disable=g-import-not-at-top

  def vgg16(pretrained=False, **kwargs):
    del pretrained, kwargs
    layers, width = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(width, v, 3, padding=1), nn.ReLU(inplace=True)]
        width = v
    return types.SimpleNamespace(features=nn.Sequential(*layers))

  torchvision = types.ModuleType("torchvision")
  models = types.ModuleType("torchvision.models")
  models.vgg16 = vgg16
  torchvision.models = models
  return {"torchvision": torchvision, "torchvision.models": models}


def _options(repo: str, args, checkpoints_dir: str):
  """The checkout's TrainOptions().parse() on scripts/train.sh's options (CPU, our batch size and sizes)."""
  from options.train_options import TrainOptions  # pylint: disable=g-import-not-at-top
  argv = ["train.py", "--name", "bench", "--model", "tc", "--coarse_or_refine", "coarse", "--netT", "original",
          "--n_encoders", "12", "--n_decoders", "0", "--netD", "style", "--gpu_ids", "-1",
          "--load_size", str(args.fine_size + 30), "--fine_size", str(args.fine_size),
          "--fixed_size", str(args.fixed_size), "--batch_size", str(args.batch_size), "--attn_G", "--add_noise",
          "--checkpoints_dir", checkpoints_dir, "--lipip_path", os.path.join(repo, "model", "lpips", "vgg.pth")]
  saved = sys.argv
  sys.argv = argv
  try:
    return TrainOptions().parse()
  finally:
    sys.argv = saved


def _data(torch, args):
  """A batch shaped as dataloader/data_loader.py's: images in [0, 1], mask 1 = visible with a box hole."""
  rng = torch.Generator().manual_seed(0)
  b, fine, fixed = args.batch_size, args.fine_size, args.fixed_size
  mask = torch.ones(b, 1, fine, fine)
  mask[:, :, fine // 4: 3 * fine // 4, fine // 4: 3 * fine // 4] = 0
  return {"img_org": torch.rand(b, 3, fine, fine, generator=rng), "img": torch.rand(b, 3, fixed, fixed, generator=rng),
          "mask": mask, "img_path": [f"bench_{i}.png" for i in range(b)]}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tfill_repo", required=True, help="a checkout of lyndonzheng/TFill (e05bc6b)")
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--fine_size", type=int, default=512, help="the data's size (img_org, mask)")
  parser.add_argument("--fixed_size", type=int, default=256, help="the coarse networks' size")
  parser.add_argument("--steps", type=int, default=5, help="timed iterations, after one untimed")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  repo = os.path.abspath(args.tfill_repo)
  if not all(os.path.isfile(os.path.join(repo, p)) for p in ("model/tc_model.py", "options/train_options.py")):
    parser.error(f"--tfill_repo {args.tfill_repo} has no model/tc_model.py and options/train_options.py: give a "
                 "checkout of https://github.com/lyndonzheng/TFill")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    parser.error("needs torch: pip install -r requirements-test.txt")
  torch.set_num_threads(args.threads)
  sys.path.insert(0, repo)
  for name, module in {**_stylegan_ops_shims(repo), **_torchvision_stand_in()}.items():
    sys.modules[name] = module
  import model as tfill_model  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  with tempfile.TemporaryDirectory() as checkpoints_dir, contextlib.redirect_stdout(io.StringIO()):
    opt = _options(repo, args, checkpoints_dir)  # It prints every option and writes train_opt.txt.
    tc = tfill_model.create_model(opt)
    tc.setup(opt)  # schedulers; prints the networks
    tc.parallelize()
  counts = {name: sum(p.numel() for p in getattr(tc, f"net{name}").parameters()) for name in ("E", "T", "G", "D")}
  data = _data(torch, args)
  times = []
  for i in range(args.steps + 1):
    start = time.perf_counter()
    tc.set_input(data)
    tc.optimize_parameters()
    if i:
      times.append(time.perf_counter() - start)
  losses = {k: round(v, 3) for k, v in tc.get_current_losses().items()}
  if not all(math.isfinite(v) for v in losses.values()):
    raise SystemExit(f"non-finite losses: {losses}")
  median = statistics.median(times)
  try:
    import resource  # pylint: disable=g-import-not-at-top
    peak = f"; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GB"
  except ImportError:
    peak = ""
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads")
  print(f"TFill TC coarse iteration (set_input + optimize_parameters; E {counts['E']:,}, T {counts['T']:,}, "
        f"G {counts['G']:,}, D {counts['D']:,} parameters; last losses {losses}){peak}")
  print(f"TFill TC coarse iteration, batch {args.batch_size}, fine {args.fine_size} / fixed {args.fixed_size} px: "
        f"median {median:.2f} s over {len(times)} (min {min(times):.2f}, max {max(times):.2f}); "
        f"{args.batch_size / median:.3f} images/s")


if __name__ == "__main__":
  main()
