"""SSuperGAN's VAE baseline: the IntroVAE network (64 px, channels 64-512, latent 256) trained on the ELBO.

One parameter group "vae" (encoder and decoder; BatchNorm statistics in collections["vae"]["batch_stats"]), as
playground/vae/vae_playground.py + training/vae_trainer.py train it at a4d7a60: z = mu + exp(log_std) * noise,
loss = Gaussian NLL of the face under N(decoded, 1) summed over pixels + KL (batch means; families/ssupergan.py),
one Adam over everything (2e-4, (0.5, 0.999), weight decay 2.5e-5 added to the gradient, the learning rate
linear to 0 over the run, global norm clipped at 100). The decoder has no output activation, as the original's.

Samples: prior faces decode(z ~ N(0, 1)), then the sample faces' reconstructions decode(mu) beside the faces
(BatchNorm with its running statistics). `generate --num N` decodes prior samples, `generate --images DIR`
reconstructs faces from mu ("reconstruction", the original's reconstruct; the raw decoder output, which
--save_raw keeps unclipped).
"""

import ml_collections
import jax

from facegen_jax import families
from facegen_jax import optim
from facegen_jax import state as state_lib
from facegen_jax.families import common
from facegen_jax.families import ssupergan as shared

CONTRACT = families.Contract(
    optimizer_groups=("vae",), ema_groups=("vae",), task="sample",
    eval_outputs={"generated": families.EvalOutput(inputs=(), reference="image")})
RECONSTRUCTION = "reconstruction"  # generate --images: the output that reconstructs its "image" input.


def validate(config: ml_collections.ConfigDict) -> None:
  shared.validate_vae(config)


def init(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  variables = shared.vae_network(config).init(rng, shared.example_face(config), train=False)
  return {"params": {"vae": variables["params"]}, "collections": {"vae": {"batch_stats": variables["batch_stats"]}}}


def networks(config: ml_collections.ConfigDict) -> dict:
  return {"vae": (shared.vae_network(config), (shared.example_face(config),))}


def train_step(config: ml_collections.ConfigDict, state: state_lib.TrainState, batch: dict,
               rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
  vae = shared.vae_network(config)
  tx = optim.create(config, "vae")
  x = batch["image"]
  noise = common.shard_over_batch(jax.random.normal(common.step_rngs(rng, "z")["z"], (x.shape[0], config.model.latent_dim)))

  def loss_fn(params):
    out, upd = vae.apply({"params": common.to_compute(config, params), **state.collections["vae"]},
                         common.to_compute(config, x), common.to_compute(config, noise), train=True,
                         mutable=["batch_stats"])
    out = common.to_float32(out)
    terms = shared.elbo(config, x, out.image, out.mu, out.log_std)
    return terms["loss"], (upd, terms, out.image)

  (_, (upd, terms, image)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["vae"])
  state = state.update("vae", tx, grads).with_collections("vae", {"batch_stats": upd["batch_stats"]})
  metrics = {f"vae/{k}": v for k, v in terms.items()}
  metrics.update(shared.recon_metrics("vae", x, image))
  return state.replace(step=state.step + 1), metrics


def sample_inputs(config: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
  return {"z": jax.random.normal(rng, (config.num_sample_images, config.model.latent_dim)),
          **shared.sample_batch(config, batch, ("image",))}


def _apply(config, state, x, method):
  return shared.vae_network(config).apply({"params": state.params["vae"], **state.collections["vae"]}, x,
                                          train=False, method=method)


def sample(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict) -> dict:
  """Prior samples | real faces | their reconstructions from mu, in [-1, 1]."""
  recon = _apply(config, state, inputs["image"], "__call__").image
  return {"prior": shared.clip_images(_apply(config, state, inputs["z"], "decode")), "real": inputs["image"],
          "reconstruction": shared.clip_images(recon)}


def eval_inputs(config: ml_collections.ConfigDict, rng: jax.Array, size: int, data: dict) -> dict:
  """z ~ N(0, 1) for `size` prior samples, and the faces of `data` to reconstruct (generate --images)."""
  return {"z": jax.random.normal(rng, (size, config.model.latent_dim)), **data}


def generate(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict,
             rng: jax.Array) -> dict:
  """{"generated": decode(z)} and, given "image", {"reconstruction": decode(mu(image))}: eval mode, the decoder's
  raw output (no activation, as the original's)."""
  del rng
  out = {"generated": _apply(config, state, inputs["z"], "decode")}
  if "image" in inputs:
    out[RECONSTRUCTION] = _apply(config, state, inputs["image"], "__call__").image
  return out
