"""MUNIT (Huang et al. 2018) as NVlabs/MUNIT trains it (configs/edges2shoes_folder.yaml's options).

  python -m facegen_jax.main --config configs/munit.py --workdir runs/munit              # MUNIT's defaults
  python -m facegen_jax.main --config configs/munit.py:cpu --workdir runs/munit_cpu      # minutes on 2 cores

Domain a is the face photo, b the toon; the default data are the embedded synthetic photo and toon faces. For
image folders in the original's layout (trainA, trainB):
  --config.input.a.source=folder --config.input.a.folder.image_dir=dataset/NAME/trainA   (and b)
SATNet is configs/satnet.py (the same family with attention, spectral norm, hinge, TTUR and the identity loss).

Presets:
  ""    MUNIT's defaults: gen dim 64, style_dim 8, mlp_dim 256, n_downsample 2, n_res 4, relu, reflect; D dim 64,
        n_layer 4, 3 scales, no norm, lrelu, LSGAN; gan 1, recon_x 10, recon_s 1, recon_c 1, cycle 0, vgg 0
        (MUNIT's VGG16 loss: --config.loss_weights.vgg=1 --config.vgg.weights=vgg16.npz, the file from
        `python -m facegen_jax.convert vgg16`);
        Adam 1e-4 (0.5, 0.999) with weight decay 1e-4, the lr halved every 100k iterations, batch 1, 1M
        iterations; flip, resize (shorter side) to 256, random crop 256.
  cpu   minutes on 2 CPU cores: dims 16, mlp 64, 2 res blocks, 64 px, 1000 steps.
  tiny  tests. SATNet-shaped (attention, spectral norm, hinge, cycle, a random-init identity network at tiny
        widths), so the contract test covers the spectral state and the frozen identity group, and
        tests/test_munit.py shares its compiled step; MUNIT's plain networks are that minus those parts.
"""

import ml_collections

from configs import presets
from facegen_jax import base_config
from facegen_jax import optim
from facegen_jax.families import munit as munit_family
from input_pipeline import pipeline

PRESETS = ("", "cpu", "tiny")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.family = "munit"
  config.batch_size = 1
  config.num_train_steps = 1_000_000
  config.model = ml_collections.ConfigDict(dict(
      attention=False,  # SATNet's SAGAN self-attention in G and D
      gen=dict(dim=64, style_dim=8, mlp_dim=256, n_downsample=2, n_res=4, activ="relu", pad_type="reflect"),
      dis=dict(dim=64, n_layer=4, num_scales=3, norm="none", activ="lrelu", pad_type="reflect",
               gan_type="lsgan")))  # lsgan | hinge | nsgan
  config.loss_weights = ml_collections.ConfigDict(dict(
      gan=1.0, recon_x=10.0, recon_s=1.0, recon_c=1.0,
      cycle=0.0,      # recon_x_cyc_w
      vgg=0.0,        # vgg_w: MUNIT's domain-invariant perceptual loss (VGG16 from config.vgg)
      identity=0.0))  # SATNet's sph_w (sphere20a from config.identity)
  # config.vgg.weights: the .npz of `python -m facegen_jax.convert vgg16 --from models/vgg16.weight --out
  # vgg16.npz` (MUNIT's file, or torchvision's vgg16-397923af.pth), needed when loss_weights.vgg > 0.
  config.vgg = munit_family.vgg_config()
  config.identity = munit_family.identity_config()
  for group in ("g", "d"):  # One Adam for both generators, one for both Ds, as the original.
    config.optim[group] = optim.config(name="adam", lr=1e-4, b1=0.5, b2=0.999, weight_decay=1e-4,
                                       decay_every_steps=100_000, decay_factor=0.5)
  set_input(config, a="photo", b="toon", resolution=256, load_size=256, seeds=(0, 1))
  config.log_every_steps = 10          # log_iter
  config.sample_every_steps = 10_000   # image_save_iter
  config.checkpoint_every_steps = 10_000  # snapshot_save_iter
  config.num_sample_images = 16        # display_size
  config.eval.kid_subset_size = None

  if preset == "cpu":
    config.model.gen.update(dim=16, mlp_dim=64, n_res=2)
    config.model.dis.dim = 16
    set_input(config, a="photo", b="toon", resolution=64, load_size=64, seeds=(0, 1))
    config.input.a.synthetic.num_examples = 200
    config.input.b.synthetic.num_examples = 200
    config.num_train_steps = 1000
    config.log_every_steps = 50
    config.sample_every_steps = 250
    config.checkpoint_every_steps = 250
    config.num_sample_images = 4
  elif preset == "tiny":
    tiny(config)
  elif preset:
    raise presets.unknown_preset(preset, "configs/munit.py", PRESETS)
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """SATNet's shape at toy size (see the module docstring); configs/satnet.py:tiny is the same config."""
  presets.tiny(config, batch_size=2, resolution=32)
  config.model.attention = True
  config.model.gen.update(dim=8, style_dim=4, mlp_dim=16, n_res=1)
  config.model.dis.update(dim=8, n_layer=3, norm="sn", gan_type="hinge")  # 3 layers: 32 px has 8 at the 3rd scale
  config.loss_weights.update(cycle=10.0, identity=10.0)
  # Threshold 1 (loss 1 - cos): a random-init sphere20a scores any two faces at cos ~0.9, so 0.2875 would leave
  # the term at 0 and its gradient untested.
  config.identity.update(random_init=True, widths=(4, 4, 4, 4), embedding_dim=8, threshold=1.0)
  set_input(config, a="toon", b="photo", resolution=32, load_size=None, seeds=(0, 0))
  config.input.a.synthetic.num_examples = 16
  config.input.b.synthetic.num_examples = 16
  config.num_sample_images = 2
  return config


def set_input(config, *, a: str, b: str, resolution, load_size, seeds: tuple[int, int]) -> None:
  """Two synthetic domains; MUNIT's train transform: flip, resize (shorter side) to load_size, random crop of
  `resolution` (load_size None: the resolution, no crop). The same seed draws the same identities in both."""
  config.input.domains = ("a", "b")
  config.input.a = pipeline.domain_config(synthetic=dict(domain=a, seed=seeds[0]))
  config.input.b = pipeline.domain_config(synthetic=dict(domain=b, seed=seeds[1]))
  config.input.resolution = resolution
  config.input.load_size = load_size
  config.input.resize = "shorter_side"
  config.input.random_crop = load_size is not None
  config.input.random_flip = True
