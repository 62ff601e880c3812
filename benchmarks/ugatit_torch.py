r"""Times the original: znxlwm/UGATIT-pytorch's own G+D iteration, torch on CPU, beside our U-GAT-IT step.

  python benchmarks/ugatit_torch.py --ugatit_repo PATH/TO/UGATIT-pytorch [--light|--no-light] [--img_size 128]
      [--batch_size 1] [--steps 5] [--threads 2]

The figure `benchmarks/train_step.py --config configs/ugatit.py:light --config.input.resolution=128
--config.input.load_size=158` is compared with. Needs torch (requirements-test.txt) and a checkout of
https://github.com/znxlwm/UGATIT-pytorch; nothing else. The networks, the Adam optimizers and the losses are the
checkout's own `UGATIT.build_model` (genA2B/B2A with ngf 64 and 4 res blocks, disGA/GB n_layers 7, disLA/LB 5,
its defaults for lr, weight decay and loss weights); the timed iteration is the checkout's own `UGATIT.train` loop
body, taken from its source from the D update (`self.D_optim.zero_grad()`) to the rho clipper, run on random
images in place of the data loaders (its learning-rate decay lines change nothing before iteration 500,000). What
the import needs but the iteration never uses is stood in for: torchvision (its transforms, for the datasets),
the checkout's ImageFolder and torch's DataLoader (the datasets), cv2 (utils.py's image saving).

With `--train_synthetic N` it trains instead of timing: N iterations on the synthetic default (200 photos of seed
0 as trainA, 200 toons of seed 1 as trainB, drawn at img_size + 30, a random img_size crop and a flip, as the `cpu`
preset), printing every --log_every iterations the means of the terms our U-GAT-IT logs under the same names:
g/cycle, g/identity (L1 summed over both directions), g/cam (the four BCE terms), g/adv (G's 8 LSGAN terms) and
d/loss (D's 16). Beside `python -m facegen_jax.main --config configs/ugatit.py:cpu`, whose log averages the same
terms over the same interval:

  python benchmarks/ugatit_torch.py --ugatit_repo UGATIT-pytorch --img_size 64 --ngf 16 --n_res 2 \
      --n_layers_global 6 --train_synthetic 1000

Note that the original's D step does not detach the fakes, so its D backward also runs through both generators
(their gradients are zeroed before the G step): that is part of what it costs, and we time it as it is.
"""

import argparse
import ast
import contextlib
import io
import os
import platform
import statistics
import sys
import time
import types

_FIRST = "self.D_optim.zero_grad()"  # The first and last statements of the timed part of UGATIT.train's loop.
_LAST = "Rho_clipper"


def _stand_ins():
  transforms = types.ModuleType("torchvision.transforms")
  def stand_in(name):  # Compose, Resize, ...: built for the datasets, never applied.
    if name.startswith("_"):
      raise AttributeError(name)
    return lambda *args, **kwargs: None
  transforms.__getattr__ = stand_in
  torchvision = types.ModuleType("torchvision")
  torchvision.transforms = transforms
  return {"torchvision": torchvision, "torchvision.transforms": transforms, "cv2": types.ModuleType("cv2")}


def _iteration_fn(ugatit_py: str, namespace: dict):
  """`(self, real_A, real_B) -> None`: the statements of UGATIT.train's loop from _FIRST through the last one
  mentioning _LAST, compiled from the checkout's source in the UGATIT module's namespace."""
  with open(ugatit_py) as f:
    source = f.read()
  tree = ast.parse(source)
  train = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "train")
  loop = next(node for node in ast.walk(train) if isinstance(node, ast.For))
  texts = [ast.get_source_segment(source, stmt) for stmt in loop.body]
  first = next((i for i, text in enumerate(texts) if text.strip() == _FIRST), None)
  last = max((i for i, text in enumerate(texts) if _LAST in text), default=None)
  if first is None or last is None or last < first:
    raise SystemExit(f"{ugatit_py}: UGATIT.train's loop has no {_FIRST!r} ... {_LAST!r} part; is it "
                     "znxlwm/UGATIT-pytorch?")
  args = ast.arguments(posonlyargs=[], args=[ast.arg(arg=name) for name in ("self", "real_A", "real_B")],
                       kwonlyargs=[], kw_defaults=[], defaults=[])
  fn = ast.FunctionDef(name="ugatit_iteration", args=args, body=loop.body[first:last + 1], decorator_list=[],
                       type_params=[])
  module = ast.fix_missing_locations(ast.Module(body=[fn], type_ignores=[]))
  exec(compile(module, ugatit_py, "exec"), namespace)  # pylint: disable=exec-used
  return namespace["ugatit_iteration"], last + 1 - first


class _Recorded:
  """A loss module that also records its values, in call order (how the iteration's loss terms are read)."""

  def __init__(self, loss, record: list):
    self.loss, self.record = loss, record

  def __call__(self, x, target):
    value = self.loss(x, target)
    self.record.append(float(value.detach()))
    return value


def _train_synthetic(gan, iteration, args) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top

  load, size = args.img_size + 30, args.img_size
  domains = {d: np.stack([synthetic.render(seed, i, load, d)["image"] for i in range(200)])
             for d, seed in (("photo", 0), ("toon", 1))}
  rng = np.random.default_rng(0)

  def batch(images):  # UGATIT-pytorch's train transform: flip, resize to size + 30 (drawn so), random crop.
    out = []
    for _ in range(args.batch_size):
      x = images[rng.integers(len(images))]
      top, left = rng.integers(0, load - size + 1, 2)
      x = x[top:top + size, left:left + size]
      out.append(x[:, ::-1] if rng.random() < 0.5 else x)
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)

  l1, bce, mse = [], [], []
  gan.L1_loss = _Recorded(gan.L1_loss, l1)
  gan.BCE_loss = _Recorded(gan.BCE_loss, bce)
  gan.MSE_loss = _Recorded(gan.MSE_loss, mse)
  rows, start = [], time.perf_counter()
  for step in range(1, args.train_synthetic + 1):
    del l1[:], bce[:], mse[:]
    iteration(gan, batch(domains["photo"]), batch(domains["toon"]))
    # Call order: L1 cycle A, cycle B, identity A, identity B; MSE D's 16 terms, then G's 8; BCE G's 4 CAM terms.
    rows.append((l1[0] + l1[1], l1[2] + l1[3], sum(bce), sum(mse[16:]), sum(mse[:16])))
    if step % args.log_every == 0 or step == args.train_synthetic:
      means = np.mean(rows, axis=0)
      rows = []
      print(f"[{step}] " + ", ".join(f"{name}={value:.4f}" for name, value in zip(
          ("g/cycle", "g/identity", "g/cam", "g/adv", "d/loss"), means)) +
            f" ({time.perf_counter() - start:.0f} s)", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ugatit_repo", required=True, help="a checkout of znxlwm/UGATIT-pytorch")
  parser.add_argument("--light", action=argparse.BooleanOptionalAction, default=True,
                      help="the light generator (--no-light: the full one)")
  parser.add_argument("--img_size", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=1)
  parser.add_argument("--steps", type=int, default=5, help="timed iterations, after one untimed")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--ngf", type=int, default=64, help="main.py's --ch")
  parser.add_argument("--n_res", type=int, default=4)
  parser.add_argument("--n_layers_global", type=int, default=7, help="build_model's 7 (the cpu preset: 6)")
  parser.add_argument("--n_layers_local", type=int, default=5)
  parser.add_argument("--train_synthetic", type=int, default=0, metavar="N",
                      help="train N iterations on the synthetic default and print the losses (no timing)")
  parser.add_argument("--log_every", type=int, default=50)
  args = parser.parse_args()
  ugatit_py = os.path.join(args.ugatit_repo, "UGATIT.py")
  if not os.path.isfile(os.path.join(args.ugatit_repo, "networks.py")) or not os.path.isfile(ugatit_py):
    parser.error(f"--ugatit_repo {args.ugatit_repo} has no UGATIT.py and networks.py: give a checkout of "
                 "https://github.com/znxlwm/UGATIT-pytorch")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    parser.error("needs torch: pip install -r requirements-test.txt")
  torch.set_num_threads(args.threads)
  sys.path.insert(0, os.path.abspath(args.ugatit_repo))
  for name, module in _stand_ins().items():
    sys.modules.setdefault(name, module)
  import UGATIT as ugatit_module  # pylint: disable=g-import-not-at-top
  ugatit_module.ImageFolder = lambda *a, **k: None
  ugatit_module.DataLoader = lambda *a, **k: None

  # main.py's defaults, except light, img_size, batch_size, ch (--ngf), n_res and the device.
  options = argparse.Namespace(
      light=args.light, result_dir="results", dataset="bench", iteration=1_000_000, decay_flag=True,
      batch_size=args.batch_size, print_freq=1000, save_freq=100_000, lr=1e-4, weight_decay=1e-4, ch=args.ngf,
      adv_weight=1, cycle_weight=10, identity_weight=10, cam_weight=1000, n_res=args.n_res, n_dis=6,
      img_size=args.img_size, img_ch=3, device="cpu", benchmark_flag=False, resume=False)
  torch.manual_seed(0)
  with contextlib.redirect_stdout(io.StringIO()):  # UGATIT's constructor prints its settings.
    gan = ugatit_module.UGATIT(options)
  gan.build_model()
  if (args.n_layers_global, args.n_layers_local) != (7, 5):  # build_model's are fixed: the same Ds, rebuilt.
    import networks  # pylint: disable=g-import-not-at-top
    for name, n_layers in (("GA", args.n_layers_global), ("GB", args.n_layers_global), ("LA", args.n_layers_local),
                           ("LB", args.n_layers_local)):
      setattr(gan, f"dis{name}", networks.Discriminator(input_nc=3, ndf=args.ngf, n_layers=n_layers))
    discriminators = (gan.disGA, gan.disGB, gan.disLA, gan.disLB)
    gan.D_optim = torch.optim.Adam([p for d in discriminators for p in d.parameters()], lr=options.lr,
                                   betas=(0.5, 0.999), weight_decay=options.weight_decay)
  iteration, statements = _iteration_fn(ugatit_py, vars(ugatit_module))
  gan.genA2B.train(), gan.genB2A.train(), gan.disGA.train(), gan.disGB.train(), gan.disLA.train(), gan.disLB.train()
  if args.train_synthetic:
    _train_synthetic(gan, iteration, args)
    return

  rng = torch.Generator().manual_seed(0)
  shape = (args.batch_size, 3, args.img_size, args.img_size)
  real_a, real_b = (torch.rand(shape, generator=rng) * 2 - 1 for _ in range(2))
  times = []
  for i in range(args.steps + 1):
    start = time.perf_counter()
    iteration(gan, real_a, real_b)
    if i:
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads")
  print(f"UGATIT-pytorch {'light' if args.light else 'full'} G+D iteration ({statements} statements of "
        f"UGATIT.train), batch {args.batch_size}, {args.img_size} px: median {median:.2f} s over {len(times)} "
        f"(min {min(times):.2f}, max {max(times):.2f}); {args.batch_size / median:.3f} images/s")


if __name__ == "__main__":
  main()
