r"""Times the original: NVlabs/MUNIT's own iteration, torch on CPU, beside our MUNIT step.

  python benchmarks/munit_torch.py --munit_repo PATH/TO/MUNIT [--config configs/edges2handbags_folder.yaml]
      [--size 128] [--batch_size 1] [--steps 5] [--threads 2]

The figure `benchmarks/train_step.py --config configs/munit.py --config.input.resolution=128
--config.input.load_size=128 --input_batches 0` is compared with. Needs torch (requirements-test.txt), pyyaml and a
checkout of https://github.com/NVlabs/MUNIT; nothing else. The trainer is the checkout's own `MUNIT_Trainer`, built
from its own yaml (edges2handbags: MUNIT's defaults, LSGAN, 3 scales, no VGG loss), and the timed iteration is its
train.py loop body: `update_learning_rate()`, `dis_update(a, b, config)`, `gen_update(a, b, config)`, on random
images of `--size` px. What the import needs but the iteration never uses is stood in for: torchvision (the data
transforms and image grids), `torch.utils.serialization.load_lua` (gone from torch; the Lua VGG loader). The
trainer hard-codes `.cuda()` on its random style codes: on this CPU-only build a tensor's `.cuda()` returns the
tensor itself while the benchmark runs.
"""

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
import types
import warnings


def _stand_ins():
  def stand_in(name):  # transforms.Compose, vutils.make_grid, ...: built for the data and grids, never applied.
    if name.startswith("_"):
      raise AttributeError(name)
    return lambda *args, **kwargs: None
  modules = {}
  for name in ("torchvision", "torchvision.transforms", "torchvision.utils", "torch.utils.serialization"):
    module = types.ModuleType(name)
    module.__getattr__ = stand_in
    modules[name] = module
  modules["torchvision"].transforms = modules["torchvision.transforms"]
  modules["torchvision"].utils = modules["torchvision.utils"]
  return modules


@contextlib.contextmanager
def _cuda_is_cpu(torch):
  original = torch.Tensor.cuda
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  try:
    yield
  finally:
    torch.Tensor.cuda = original


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--munit_repo", required=True, help="a checkout of NVlabs/MUNIT")
  parser.add_argument("--config", default="configs/edges2handbags_folder.yaml",
                      help="the trainer's yaml, relative to --munit_repo")
  parser.add_argument("--size", type=int, default=128, help="square crops of this size")
  parser.add_argument("--batch_size", type=int, default=1)
  parser.add_argument("--steps", type=int, default=5, help="timed iterations, after one untimed")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  trainer_py = os.path.join(args.munit_repo, "trainer.py")
  config_path = os.path.join(args.munit_repo, args.config)
  if not os.path.isfile(trainer_py) or not os.path.isfile(os.path.join(args.munit_repo, "networks.py")):
    parser.error(f"--munit_repo {args.munit_repo} has no trainer.py and networks.py: give a checkout of "
                 "https://github.com/NVlabs/MUNIT")
  if not os.path.isfile(config_path):
    parser.error(f"--config: no file {config_path}")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    parser.error("needs torch: pip install -r requirements-test.txt")
  torch.set_num_threads(args.threads)
  sys.path.insert(0, os.path.abspath(args.munit_repo))
  for name, module in _stand_ins().items():
    sys.modules.setdefault(name, module)
  import trainer as trainer_module  # pylint: disable=g-import-not-at-top
  import yaml  # pylint: disable=g-import-not-at-top

  with open(config_path) as f:  # utils.get_config's yaml.load(stream) needs a Loader in PyYAML >= 6.
    config = yaml.safe_load(f)
  config.update(batch_size=args.batch_size, crop_image_height=args.size, crop_image_width=args.size,
                new_size=args.size)
  # The trainer steps its schedulers before its optimizers (torch >= 1.1 warns every iteration).
  warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
  torch.manual_seed(0)
  with _cuda_is_cpu(torch):
    trainer = trainer_module.MUNIT_Trainer(config)
    trainer.train()
    rng = torch.Generator().manual_seed(0)
    shape = (args.batch_size, config["input_dim_a"], args.size, args.size)
    images_a, images_b = (torch.rand(shape, generator=rng) * 2 - 1 for _ in range(2))
    times = []
    for i in range(args.steps + 1):
      start = time.perf_counter()
      trainer.update_learning_rate()
      trainer.dis_update(images_a, images_b, config)
      trainer.gen_update(images_a, images_b, config)
      if i:
        times.append(time.perf_counter() - start)
  median = statistics.median(times)
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads")
  print(f"NVlabs/MUNIT iteration ({args.config}: gan {config['dis']['gan_type']}, {config['dis']['num_scales']} "
        f"scales, vgg_w {config['vgg_w']}), batch {args.batch_size}, {args.size} px: median {median:.2f} s over "
        f"{len(times)} (min {min(times):.2f}, max {max(times):.2f}); {args.batch_size / median:.3f} images/s")


if __name__ == "__main__":
  main()
