r"""Times the original: barisbatuhan/SSuperGAN's own VAE training iteration at a4d7a60, torch on CPU.

  python benchmarks/ssupergan_torch.py --ssupergan_repo PATH/TO/SSuperGAN@a4d7a60 --model plain_ssupervae|vae
      [--batch_size 4|64] [--steps 5] [--threads 2]

Compared with (the configs' defaults):
  plain_ssupervae: `python benchmarks/train_step.py --config configs/ssupervae.py --input_batches 0`
                   (EfficientNet-b5, 3 context panels of 300 x 300 px -> a 64 px face, batch 4)
  vae:             `python benchmarks/train_step.py --config configs/vae.py --input_batches 0` (64 px, batch 64)

Needs torch and efficientnet_pytorch 0.7.1 (requirements-test.txt) and the original's code at commit a4d7a60, the
last one before the networks refactor, where networks/intro_vae.py and networks/ssupervae.py still exist (e.g.
`git -C SSuperGAN worktree add ../SSuperGAN-a4d7a60 a4d7a60`). The checkout's files that the iteration runs are
compared with a4d7a60's by their git blob ids; other versions are named in the output, and a checkout without
those two files (the refactor or later) is refused.

Built as the original's playgrounds build them (playground/ssupervae/ssupervae_playground.py and
playground/vae/vae_playground.py): the network (SSuperVAE(backbone efficientnet-b5, latent 256, embed 256, plain
sequential encoder, 3 panels, decoder [64, 128, 256, 512] at 64 px), or IntroVAE(64 px, [64, 128, 256, 512],
hdim 256) as the VAE), criterion `functional/losses/elbo.elbo`, Adam(all parameters, 2e-4, (0.5, 0.999),
weight_decay 2.5e-5), the epoch-wise LambdaLR, and `training/vae_trainer.VAETrainer` with grad_clip 100. The
hyper-parameters live in the original's configs/*.yaml, which its .gitignore kept out of the repository; they are
the ones issue 13 states. The timed iteration is VAETrainer.train_vae's own loop body, taken from the checkout's
source, from `self.optimizer.zero_grad()` through `self.optimizer.step()` (forward with a reparameterised sample,
ELBO, backward, clip_grad_norm_ 100 over all parameters, one Adam step), run in train mode on random inputs in
[-1, 1] in place of the data loader's batch (panels (B, 3, 3, 300, 300) and target face (B, 3, 64, 64); for the
VAE, faces (B, 3, 64, 64) that are their own target). The scheduler steps per epoch, outside the timed part.

Stand-ins, for what the imports need but the iteration never uses:
  - EfficientNet's ImageNet weights: CNNEmbedder still calls efficientnet_pytorch's own
    EfficientNet.from_pretrained(backbone, num_classes=256), but its weight loader is replaced by a no-op, so the
    backbone is from_name's random initialisation with the same fresh Linear(2048, 256) head (nothing downloads;
    the values of the weights do not change the work).
  - configs/base_config.py (it raises unless the working directory is one of the authors' machines): base_dir is
    a temporary directory.
  - torchvision (save_image for samples, datasets, transforms, models), matplotlib and scikit-image (plots and
    image files in utils/image_utils.py): empty modules whose few named functions raise if called.
  - The data loaders: none are built; the trainer gets train_loader=None, test_loader=None.
"""

import argparse
import ast
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types

COMMIT = "a4d7a60"
# git blob ids at a4d7a60 of the files the timed iteration runs (git ls-tree -r a4d7a60).
_BLOBS = {
    "functional/losses/elbo.py": "a533de876b8cdba159b416b2911c1c2e05265a77",
    "functional/losses/kl_loss.py": "253a64ffa632ed228c02a69b1ad08e9b920c0cb5",
    "functional/losses/reconstruction_loss.py": "8b23fd025547d6ad7b615148adf47948f21bac6c",
    "networks/base/base_vae.py": "24680ac2884eb157ae3e9440b320fc539538e716",
    "networks/generic_vae.py": "c81a3769c3ab5da9f0fa6e4e26626762a5924a40",
    "networks/intro_vae.py": "2a8e997d127c317862894844b2d124e6ace1f835",
    "networks/panel_encoder/cnn_embedder.py": "39078fb02713165ccdcebe78e82bb550a8dacdcf",
    "networks/panel_encoder/plain_sequential_encoder.py": "330edc7fd58ef4a9e9cdc673d1e0544dacbd380c",
    "networks/ssupervae.py": "29d2af1a314aedd8c13fff70e405d179aa4bc27c",
    "training/base_trainer.py": "21503287565e391f79607d24fdb30e30b1ec1f4d",
    "training/vae_trainer.py": "4f633326013dc65b9ed4986b4b32f4426fe64867",
    "utils/pytorch_util.py": "4249cc211482be94a19330cf7a4f3320cbb0878d",
}
_FIRST = "self.optimizer.zero_grad()"  # The first and last statements of the timed part of train_vae's loop.
_LAST = "self.optimizer.step()"
_PACKAGES = ("configs", "data", "functional", "networks", "training", "utils")  # The checkout's top-level dirs.
# Issue 13's settings per model (the playgrounds' config fields).
_SETTINGS = {"plain_ssupervae": dict(batch_size=4, panels=3, panel_size=300, backbone="efficientnet-b5"),
             "vae": dict(batch_size=64)}
_EXPECTED_PARAMS = {"plain_ssupervae": 38_660_083, "vae": 23_141_891}  # tests/test_ssupergan_nets.py's counts


def _blob_id(path: str) -> str:
  with open(path, "rb") as f:
    data = f.read()
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_checkout(repo: str, parser, blobs: dict, required: tuple, deleted: str) -> str:
  """One line saying which version of the original runs (`blobs`: path -> git blob id at COMMIT); refuses a
  checkout without the `required` files, which the networks refactor after COMMIT deleted (`deleted` says which)."""
  missing = [p for p in required if not os.path.isfile(os.path.join(repo, p))]
  if missing:
    parser.error(f"--ssupergan_repo {repo} has no {', '.join(missing)}: give a checkout of "
                 f"https://github.com/barisbatuhan/SSuperGAN at {COMMIT} (the networks refactor after it deleted "
                 f"{deleted})")
  head = subprocess.run(["git", "-C", repo, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True)
  where = f"HEAD {head.stdout.strip()}" if head.returncode == 0 else "not a git checkout"
  changed = [p for p, blob in blobs.items()
             if not os.path.isfile(os.path.join(repo, p)) or _blob_id(os.path.join(repo, p)) != blob]
  if changed:
    return f"SSuperGAN ({where}): NOT {COMMIT}'s code, these files differ from it: {', '.join(changed)}"
  return f"SSuperGAN ({where}): the {len(blobs)} files the iteration runs are {COMMIT}'s"


def _module(name: str, **attrs) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__dict__.update(attrs)
  return module


def _unused(name: str):
  def call(*args, **kwargs):
    raise RuntimeError(f"{name} is a stand-in of benchmarks/ssupergan_torch.py: the timed iteration never calls it")
  return call


def _stand_ins(repo: str, base_dir: str) -> dict:
  """Modules for sys.modules; the checkout's own top-level dirs are pinned first, as the facegen_jax repository
  (installed) has a `configs` package of its own."""
  modules = {name: _module(name, __path__=[os.path.join(repo, name)]) for name in _PACKAGES}
  modules["configs.base_config"] = _module("configs.base_config", base_dir=base_dir)
  tv_utils = _module("torchvision.utils", save_image=_unused("torchvision.utils.save_image"))
  tv_parts = {part: _module(f"torchvision.{part}") for part in ("datasets", "transforms", "models")}
  modules.update({"torchvision": _module("torchvision", utils=tv_utils, **tv_parts), "torchvision.utils": tv_utils},
                 **{f"torchvision.{part}": module for part, module in tv_parts.items()})
  pyplot = _module("matplotlib.pyplot")
  modules.update({"matplotlib": _module("matplotlib", pyplot=pyplot), "matplotlib.pyplot": pyplot})
  skimage_parts = {"io": _module("skimage.io"), "transform": _module("skimage.transform"),
                   "color": _module("skimage.color", rgba2rgb=_unused("rgba2rgb"), gray2rgb=_unused("gray2rgb")),
                   "util": _module("skimage.util", crop=_unused("crop"))}
  modules["skimage"] = _module("skimage", **skimage_parts)
  modules.update({f"skimage.{part}": module for part, module in skimage_parts.items()})
  return modules


def loop_fn(trainer_py: str, method: str, first: str, last: str, args: tuple, result: str, namespace: dict):
  """`(*args) -> result` (a Python expression) made of the statements from `first` through `last` of the loop in
  the trainer's `method` whose body holds `last`, compiled from the checkout's source in `namespace` (the trainer
  module's); returns it with its number of statements."""
  with open(trainer_py) as f:
    source = f.read()
  function = next((node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
                   and node.name == method), None)
  loops = [node for node in ast.walk(function) if isinstance(node, ast.For)] if function else []
  bodies = [(loop.body, [ast.get_source_segment(source, stmt).strip() for stmt in loop.body]) for loop in loops]
  body, texts = next(((body, texts) for body, texts in bodies if last in texts), ([], []))
  start = next((i for i, text in enumerate(texts) if text == first), None)
  end = next((i for i, text in enumerate(texts) if text == last), None)
  if start is None or end is None or end < start:
    raise SystemExit(f"{trainer_py}: {method}'s loop has no {first!r} ... {last!r} part; is it SSuperGAN at "
                     f"{COMMIT}?")
  arguments = ast.arguments(posonlyargs=[], args=[ast.arg(arg=name) for name in args], kwonlyargs=[],
                            kw_defaults=[], defaults=[])
  returned = ast.Return(value=ast.parse(result, mode="eval").body)
  fn = ast.FunctionDef(name=f"{method}_iteration", args=arguments, body=body[start:end + 1] + [returned],
                       decorator_list=[], type_params=[])
  module = ast.fix_missing_locations(ast.Module(body=[fn], type_ignores=[]))
  exec(compile(module, trainer_py, "exec"), namespace)  # pylint: disable=exec-used
  return namespace[f"{method}_iteration"], end + 1 - start


def _build(model: str, base_dir: str):
  """The playground's VAETrainer around its network, criterion (elbo), Adam and LambdaLR."""
  from torch import optim  # pylint: disable=g-import-not-at-top
  from functional.losses.elbo import elbo  # pylint: disable=g-import-not-at-top,import-error
  from training.vae_trainer import VAETrainer  # pylint: disable=g-import-not-at-top,import-error
  if model == "plain_ssupervae":
    from networks.ssupervae import SSuperVAE  # pylint: disable=g-import-not-at-top,import-error
    net = SSuperVAE("efficientnet-b5", latent_dim=256, embed_dim=256, use_lstm=False, seq_size=3,
                    decoder_channels=[64, 128, 256, 512], gen_img_size=64, lstm_hidden=256, lstm_dropout=0,
                    fc_hidden_dims=[], fc_dropout=0, num_lstm_layers=1, masked_first=True)
  else:
    from networks.intro_vae import IntroVAE  # pylint: disable=g-import-not-at-top,import-error
    net = IntroVAE(image_size=64, channels=[64, 128, 256, 512], hdim=256)
  epochs = 100
  optimizer = optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999), weight_decay=2.5e-5)
  scheduler = optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: (epochs - epoch) / epochs, last_epoch=-1)
  trainer = VAETrainer(model=net, model_name=f"bench_{model}", criterion=elbo, train_loader=None, test_loader=None,
                       epochs=epochs, optimizer=optimizer, scheduler=scheduler, quiet=True, grad_clip=100,
                       save_dir=base_dir)
  return trainer


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ssupergan_repo", required=True, help=f"a checkout of barisbatuhan/SSuperGAN at {COMMIT}")
  parser.add_argument("--model", required=True, choices=sorted(_SETTINGS))
  parser.add_argument("--batch_size", type=int, default=None, help="default: plain_ssupervae 4, vae 64")
  parser.add_argument("--steps", type=int, default=5, help="timed iterations, after one untimed")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  repo = os.path.abspath(args.ssupergan_repo)
  version = check_checkout(repo, parser, _BLOBS, ("networks/intro_vae.py", "networks/ssupervae.py",
                                                   "training/vae_trainer.py"), "intro_vae.py and ssupervae.py")
  settings = _SETTINGS[args.model]
  batch_size = args.batch_size or settings["batch_size"]
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import efficientnet_pytorch.model as efficientnet_model  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    parser.error(f"needs torch and efficientnet_pytorch==0.7.1 ({e}): pip install -r requirements-test.txt")
  torch.set_num_threads(args.threads)
  # from_pretrained = from_name(num_classes=...) + this loader (+ a no-op _change_in_channels(3)).
  efficientnet_model.load_pretrained_weights = lambda *a, **k: None
  base_dir = tempfile.mkdtemp(prefix="ssupergan_torch_bench_") + "/"
  sys.path.insert(0, repo)
  for name, module in _stand_ins(repo, base_dir).items():
    sys.modules[name] = module
  from utils import pytorch_util as ptu  # pylint: disable=g-import-not-at-top,import-error
  ptu.set_gpu_mode(False)  # The playgrounds call set_gpu_mode(True).

  torch.manual_seed(0)
  trainer = _build(args.model, base_dir)
  # The criterion's dict `out` of VAETrainer.train_vae's loop.
  iteration, statements = loop_fn(os.path.join(repo, "training", "vae_trainer.py"), "train_vae", _FIRST, _LAST,
                                  ("self", "x", "y"), "out", vars(sys.modules["training.vae_trainer"]))
  trainer.model.train()
  num_params = sum(p.numel() for p in trainer.model.parameters())
  rng = torch.Generator().manual_seed(0)
  if args.model == "plain_ssupervae":
    size = settings["panel_size"]
    x = torch.rand(batch_size, settings["panels"], 3, size, size, generator=rng) * 2 - 1
    y = torch.rand(batch_size, 3, 64, 64, generator=rng) * 2 - 1
    what = (f"PlainSSuperVAE ({settings['backbone']}, random init: from_pretrained without its weights), "
            f"{settings['panels']} panels of {size} px -> 64 px face")
  else:
    x, y = torch.rand(batch_size, 3, 64, 64, generator=rng) * 2 - 1, None
    what = "VAE (IntroVAE network), 64 px"
  times, losses = [], []
  for i in range(args.steps + 1):
    start = time.perf_counter()
    out = iteration(trainer, x, y)
    if i:
      times.append(time.perf_counter() - start)
    losses.append(out["loss"].item())
  median = statistics.median(times)
  print(version)
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
        f"load average {os.getloadavg()[0]:.1f}")
  print(f"{what}: {num_params:,} parameters"
        + ("" if num_params == _EXPECTED_PARAMS[args.model] else f" (expected {_EXPECTED_PARAMS[args.model]:,})"))
  print(f"VAETrainer.train_vae iteration ({statements} statements: ELBO, backward, clip 100, Adam), batch "
        f"{batch_size}: median {median:.3f} s over {len(times)} (min {min(times):.3f}, max {max(times):.3f}); "
        f"{batch_size / median:.2f} images/s; loss {losses[0]:.1f} -> {losses[-1]:.1f}")


if __name__ == "__main__":
  main()
