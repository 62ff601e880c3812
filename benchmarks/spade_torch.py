r"""Times the original: NVlabs/SPADE's own G+D iteration with FaceIt-SPADE's options (no VGG), torch on CPU.

  python benchmarks/spade_torch.py --spade_repo PATH/TO/NVlabs/SPADE [--batch_size 4] [--steps 5]

The figure `benchmarks/train_step.py --config configs/spade.py --config.loss_weights.vgg=0` is compared with.
Needs torch (requirements-test.txt) and a checkout of https://github.com/NVlabs/SPADE; nothing else. What the
checkout imports but a CPU iteration never uses is stood in for: torchvision (only its VGG19, for the VGG loss,
and its transforms, for the datasets), dill (saving options) and the sync_batchnorm git submodule, whose
SynchronizedBatchNorm2d on one CPU device is BatchNorm2d.
"""

import argparse
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
import types


def _stand_ins(torch):
  torchvision = types.ModuleType("torchvision")
  torchvision.models = types.ModuleType("torchvision.models")
  torchvision.transforms = types.ModuleType("torchvision.transforms")
  sync_bn = types.ModuleType("models.networks.sync_batchnorm")
  sync_bn.SynchronizedBatchNorm2d = torch.nn.BatchNorm2d
  sync_bn.DataParallelWithCallback = None
  return {"torchvision": torchvision, "torchvision.models": torchvision.models,
          "torchvision.transforms": torchvision.transforms, "dill": pickle,
          "models.networks.sync_batchnorm": sync_bn}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--spade_repo", required=True, help="a checkout of NVlabs/SPADE")
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--steps", type=int, default=5, help="timed iterations, after one untimed")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.spade_repo, "trainers", "pix2pix_trainer.py")):
    parser.error(f"--spade_repo {args.spade_repo} has no trainers/pix2pix_trainer.py: give a checkout of "
                 "https://github.com/NVlabs/SPADE")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    parser.error("needs torch: pip install -r requirements-test.txt")
  torch.set_num_threads(args.threads)
  sys.path.insert(0, os.path.abspath(args.spade_repo))
  for name, module in _stand_ins(torch).items():
    sys.modules.setdefault(name, module)
  from options.train_options import TrainOptions  # pylint: disable=g-import-not-at-top
  from trainers.pix2pix_trainer import Pix2PixTrainer  # pylint: disable=g-import-not-at-top

  checkpoints = tempfile.mkdtemp(prefix="spade_torch_bench_")  # TrainOptions writes its opt.txt there
  sys.argv = ["train.py", "--name", "bench", "--checkpoints_dir", checkpoints, "--dataset_mode", "custom",
              "--label_dir", checkpoints, "--image_dir", checkpoints, "--label_nc", "19", "--no_instance",
              "--load_size", "128", "--crop_size", "128", "--ngf", "64", "--batchSize", str(args.batch_size),
              "--no_vgg_loss", "--gpu_ids", "-1"]
  trainer = Pix2PixTrainer(TrainOptions().parse())
  rng = torch.Generator().manual_seed(0)
  n = args.batch_size
  data = {"label": torch.randint(0, 19, (n, 1, 128, 128), generator=rng), "instance": torch.zeros(n),
          "image": torch.rand(n, 3, 128, 128, generator=rng) * 2 - 1, "path": [""] * n}
  times = []
  for i in range(args.steps + 1):
    start = time.perf_counter()
    trainer.run_generator_one_step(data)
    trainer.run_discriminator_one_step(data)
    if i:
      times.append(time.perf_counter() - start)
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads")
  print(f"NVlabs SPADE G+D iteration, batch {n}, 128 px: median {statistics.median(times) * 1000:.0f} ms over "
        f"{len(times)} (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}); "
        f"{n / statistics.median(times):.2f} images/s")


if __name__ == "__main__":
  main()
