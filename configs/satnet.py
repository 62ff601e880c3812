"""SATNet (seed 001: yujiachen-y/experiments_on_face_photo2drawing, codes/SATNet): MUNIT with SAGAN self-attention,
spectral norm, hinge loss, TTUR and a SphereFace identity loss, for face photo <-> caricature. The MUNIT family
(facegen_jax/families/munit.py) in SATNet's configuration (configs/sphereface.yaml of its branch a612e62).

  python -m facegen_jax.convert sphereface --checkpoint sphere20a_X.pth --out sphere20a.npz
  python -m facegen_jax.main --config configs/satnet.py --workdir runs/satnet --config.identity.weights=sphere20a.npz
  python -m facegen_jax.main --config configs/satnet.py:cpu --workdir runs/satnet_cpu   # minutes, random sphere20a

Domain a is the drawing / caricature, b the photo (SATNet's 'c' and 'p'); the default data are the synthetic toon
(a) and photo (b) faces drawn from the same identities (one seed), so the identity loss and its cosine measure
something. WebCaricature: build it once with `python -m input_pipeline.webcaricature --manual_dir DIR` (aligned as
SATNet aligns it, side faces dropped, the protocol's people splits), then --config.input.a.source=tfds
--config.input.a.tfds.name=webcaricature/caricature --config.input.b.source=tfds
--config.input.b.tfds.name=webcaricature/photo; or already aligned folders: --config.input.a.source=folder
--config.input.a.folder.image_dir=...

Presets:
  ""    SATNet's: MUNIT's networks (dim 64, style_dim 8, mlp_dim 256, n_downsample 2, n_res 4) with self-attention,
        D n_layer 4, 3 scales, spectral norm, hinge; gan 1, recon_x 10, recon_s 1, recon_c 1, cycle 10, identity
        10 (threshold 0.2875; config.identity.weights required); Adam (0, 0.9) with weight decay 1e-4, lr_g 1e-4,
        lr_d 4e-4, lr x (1 - max(0, it - 400k) / 450k) (0.889 at the end), 450k iterations, batch 1; flip,
        resize to cover 232x200 (aligned faces are 200x232 already), random crop 224x192 (H x W).
  cpu   minutes on 2 CPU cores: dims 16, mlp 64, 2 res blocks, 112x96 (sphere20a's own input size), 1000 steps;
        the identity loss on a random-init sphere20a of widths 16-128 when config.identity.weights is not set
        (the log says so; a stand-in, not a face recognizer), with threshold 1 (loss 1 - cos: the random
        network's cosines, ~0.9, are above SATNet's 0.2875; with real weights pass
        --config.identity.threshold=0.2875).
  tiny  tests (the same config as configs/munit.py:tiny).
"""

import ml_collections

from configs import munit as munit_configs
from configs import presets

PRESETS = ("", "cpu", "tiny")
_ITERATIONS = 450_000
_DECAY_START = 400_000


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset == "tiny":
    return munit_configs.get_config("tiny")
  config = munit_configs.get_config()
  config.num_train_steps = _ITERATIONS
  config.model.attention = True
  config.model.dis.update(norm="sn", gan_type="hinge")
  config.loss_weights.update(cycle=10.0, identity=10.0)
  for group, lr in (("g", 1e-4), ("d", 4e-4)):  # TTUR
    config.optim[group].update(lr=lr, b1=0.0, b2=0.9, decay_every_steps=None, decay_start_step=_DECAY_START,
                               decay_steps=_ITERATIONS)
  munit_configs.set_input(config, a="toon", b="photo", resolution=(224, 192), load_size=(232, 200), seeds=(0, 0))
  config.log_every_steps = 50
  config.sample_every_steps = 10_000
  config.checkpoint_every_steps = 10_000

  if preset == "cpu":
    config.num_train_steps = 1000
    config.model.gen.update(dim=16, mlp_dim=64, n_res=2)
    config.model.dis.dim = 16
    for group in ("g", "d"):  # The schedule's shape at this length: constant, then the last 1/9 of it decaying.
      config.optim[group].update(decay_start_step=889, decay_steps=1000)
    # A random-init sphere20a scores any two faces at cos ~0.9-0.96 (the synthetic faces, widths 16-128), above
    # SATNet's 0.2875, where the term would be 0: threshold 1 (loss 1 - cos) keeps it acting. With real weights
    # also pass --config.identity.threshold=0.2875.
    config.identity.update(random_init=True, widths=(16, 32, 64, 128), embedding_dim=128, threshold=1.0)
    munit_configs.set_input(config, a="toon", b="photo", resolution=(112, 96), load_size=(116, 100), seeds=(0, 0))
    config.input.a.synthetic.num_examples = 200
    config.input.b.synthetic.num_examples = 200
    config.log_every_steps = 50
    config.sample_every_steps = 250
    config.checkpoint_every_steps = 250
    config.num_sample_images = 4
  elif preset:
    raise presets.unknown_preset(preset, "configs/satnet.py", PRESETS)
  return config
