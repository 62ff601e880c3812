r"""Times the original: barisbatuhan/SSuperGAN's own DCGAN training iteration at a4d7a60, torch on CPU.

  python benchmarks/dcgan_torch.py --ssupergan_repo PATH/TO/SSuperGAN@a4d7a60 [--batch_size 64] [--steps 5]
      [--threads 2]

Compared with: python benchmarks/train_step.py --config configs/dcgan.py --config.batch_size=64 --input_batches 0

Needs torch and the original's code at commit a4d7a60, the last one before the networks refactor, which deleted
networks/dcgan.py (e.g. `git -C SSuperGAN worktree add ../SSuperGAN-a4d7a60 a4d7a60`). As in
benchmarks/ssupergan_torch.py, whose helpers and stand-ins this script imports, the checkout's files that the
iteration runs are compared with a4d7a60's by their git blob ids; other versions are named in the output, and a
checkout without networks/dcgan.py is refused.

Built as playground/dcgan/dcgan_play.py builds it: DCGAN(ngpu, image_size, nc, nz, ngf, ndf) of networks/dcgan.py
(BCELoss, weights_init on the generator only, its import-time torch.manual_seed(999)), one Adam per network with
betas (beta1, 0.999), and training/dcgan_trainer.DCGANTrainer. The playground reads the rest from
configs/dcgan_config.yaml, which the original's .gitignore kept out of the repository; the values are our
configs/dcgan.py's (image_size 64, channels 3, nz 100, ngf 64, ndf 64, Adam lr 2e-4, b1 0.5), the PyTorch DCGAN
tutorial's, which networks/dcgan.py follows. ngpu (1) and epochs (150) are stored but never read by the iteration.

The timed iteration is DCGANTrainer.train_epochs's own per-batch loop body, taken from the checkout's source, from
its first statement (`x = x.to(ptu.device)`, then `batch_size = x.shape[0]`, which the rest reads) through
`self.optimizer_gen.step()`: D on the real batch (label 1) and backward, G on fresh noise, D on the detached fake
(label 0) and backward, one Adam step of D, then D on the fake (label 1) and backward into G, one Adam step of G;
three D calls in train mode, each normalising by its own batch. What follows it (loss lists, logging, the
progress bar) is not timed. Inputs: random faces in [-1, 1] of shape (B, 3, 64, 64) in place of the data
loader's batch.

Stand-ins, for what the imports need but the iteration never uses:
  - benchmarks/ssupergan_torch.py's: configs/base_config.py (base_dir a temporary directory), torchvision,
    matplotlib and scikit-image (empty modules whose few named functions raise if called).
  - Here, for networks/dcgan.py and data/augment.py (imported by networks/dcgan.py through
    data/datasets/golden_faces.py): matplotlib.animation and torchvision.transforms.functional, empty.
  - The data loader: none is built; the trainer gets data_loader=None.
"""

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # So that this file imports from any directory.
import ssupergan_torch  # pylint: disable=g-import-not-at-top,wrong-import-position

COMMIT = ssupergan_torch.COMMIT
# git blob ids at a4d7a60 of the files the timed iteration runs (git ls-tree -r a4d7a60).
_BLOBS = {
    "networks/base/base_gan.py": "013a50d1cc68cbe347d0b83e6b2532138b8cf16b",
    "networks/dcgan.py": "6496b989f9a230f337779cd948d8db300a81b26b",
    "training/dcgan_trainer.py": "ac3e61bdfb4b14366009d27decf2ed3f72211bb6",
    "utils/pytorch_util.py": "4249cc211482be94a19330cf7a4f3320cbb0878d",
}
_FIRST = "x = x.to(ptu.device)"  # The first and last statements of the timed part of train_epochs's batch loop.
_LAST = "self.optimizer_gen.step()"
_EXPECTED_PARAMS = {"G": 3_576_704, "D": 2_765_568}  # tests/test_dcgan.py's counts
# Our configs/dcgan.py's values (see the docstring); beta2 0.999 is dcgan_play.py's own.
_SETTINGS = dict(ngpu=1, image_size=64, nc=3, nz=100, ngf=64, ndf=64, lr=2e-4, beta1=0.5, epochs=150)


def _stand_ins(repo: str, base_dir: str) -> dict:
  """ssupergan_torch.py's stand-ins plus the two submodules DCGAN's imports name."""
  modules = ssupergan_torch._stand_ins(repo, base_dir)  # pylint: disable=protected-access
  module = ssupergan_torch._module  # pylint: disable=protected-access
  modules["matplotlib.animation"] = modules["matplotlib"].animation = module("matplotlib.animation")
  functional = module("torchvision.transforms.functional")
  modules["torchvision.transforms.functional"] = modules["torchvision.transforms"].functional = functional
  return modules


def _build(base_dir: str):
  """dcgan_play.py's DCGANTrainer around its DCGAN and two Adams."""
  from torch import optim  # pylint: disable=g-import-not-at-top
  with contextlib.redirect_stdout(io.StringIO()):  # networks/dcgan.py prints its seed at import.
    from training.dcgan_trainer import DCGANTrainer  # pylint: disable=g-import-not-at-top,import-error
    from networks.dcgan import DCGAN  # pylint: disable=g-import-not-at-top,import-error
  s = _SETTINGS
  net = DCGAN(s["ngpu"], s["image_size"], s["nc"], s["nz"], s["ngf"], s["ndf"])
  optimizer_d = optim.Adam(net.discriminator.parameters(), lr=s["lr"], betas=(s["beta1"], 0.999))
  optimizer_g = optim.Adam(net.generator.parameters(), lr=s["lr"], betas=(s["beta1"], 0.999))
  return DCGANTrainer(model=net, data_loader=None, epochs=s["epochs"], optimizer_disc=optimizer_d,
                      optimizer_gen=optimizer_g, dataset_name="celeb", save_dir=base_dir)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ssupergan_repo", required=True, help=f"a checkout of barisbatuhan/SSuperGAN at {COMMIT}")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5, help="timed iterations, after one untimed")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  repo = os.path.abspath(args.ssupergan_repo)
  version = ssupergan_torch.check_checkout(repo, parser, _BLOBS, ("networks/dcgan.py", "training/dcgan_trainer.py"),
                                           "networks/dcgan.py")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    parser.error(f"needs torch ({e}): pip install -r requirements-test.txt")
  torch.set_num_threads(args.threads)
  base_dir = tempfile.mkdtemp(prefix="dcgan_torch_bench_") + "/"
  sys.path.insert(0, repo)
  for name, module in _stand_ins(repo, base_dir).items():
    sys.modules[name] = module
  from utils import pytorch_util as ptu  # pylint: disable=g-import-not-at-top,import-error
  ptu.set_gpu_mode(False)  # dcgan_play.py calls set_gpu_mode(True); the loop moves x and labels to ptu.device.

  trainer = _build(base_dir)  # Initialised from networks/dcgan.py's own seed, 999, as in the playground.
  # DCGANTrainer.train_epochs's batch loop (inside its epoch loop), returning both losses.
  iteration, statements = ssupergan_torch.loop_fn(
      os.path.join(repo, "training", "dcgan_trainer.py"), "train_epochs", _FIRST, _LAST, ("self", "x"),
      "(error_D, error_G)", vars(sys.modules["training.dcgan_trainer"]))
  trainer.model.train()
  counts = {name: sum(p.numel() for p in net.parameters())
            for name, net in (("G", trainer.model.generator), ("D", trainer.model.discriminator))}
  rng = torch.Generator().manual_seed(0)
  x = torch.rand(args.batch_size, 3, 64, 64, generator=rng) * 2 - 1
  times, losses = [], []
  for i in range(args.steps + 1):
    start = time.perf_counter()
    error_d, error_g = iteration(trainer, x)
    if i:
      times.append(time.perf_counter() - start)
    losses.append((error_d.item(), error_g.item()))
  median = statistics.median(times)
  print(version)
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
        f"load average {os.getloadavg()[0]:.1f}")
  print("DCGAN, 64 px, nz 100, ngf = ndf = 64: " + ", ".join(
      f"{name} {count:,} parameters" + ("" if count == _EXPECTED_PARAMS[name] else
                                        f" (expected {_EXPECTED_PARAMS[name]:,})") for name, count in counts.items()))
  print(f"DCGANTrainer.train_epochs iteration ({statements} statements: D real + fake, Adam D, G through D, Adam G), "
        f"batch {args.batch_size}: median {median:.3f} s over {len(times)} (min {min(times):.3f}, "
        f"max {max(times):.3f}); {args.batch_size / median:.2f} images/s; loss D {losses[0][0]:.3f} -> "
        f"{losses[-1][0]:.3f}, G {losses[0][1]:.3f} -> {losses[-1][1]:.3f}")


if __name__ == "__main__":
  main()
