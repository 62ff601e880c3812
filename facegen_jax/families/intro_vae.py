"""IntroVAE (Huang et al. 2018) as SSuperGAN trains it: the VAE's network, introspective encoder and decoder steps.

Parameter groups "encoder" and "decoder" (each with its own optimizer, as the original's optimizer_e and
optimizer_g: the seed's Adam, weight decay, linear decay and clipping at 100 per network) and their BatchNorm
statistics in collections[group]["batch_stats"]. One step is training/intro_vae_trainer.py's iteration (a4d7a60),
every network call in its order, each call in training mode moving its BatchNorm statistics:

1. Encoder step. z_p ~ N(0, 1); x_p = dec(z_p); (mu, log_std) = enc(x), z sampled, x_r = dec(z);
   L_ae = 0.5 * sum (x_r - x)^2 (batch mean); KL_r, KL_pp of enc(sg(x_r)), enc(sg(x_p));
   L_E = KL(mu, log_std) + alpha * (relu(m - KL_r) + relu(m' - KL_pp)) + beta * L_ae.
   m' is the margin m (the paper's); `config.intro.original_xp_hinge` = True restores the original's alpha there
   (relu(0.25 - KL_pp), a hinge that is zero almost always).
2. Decoder step with the updated encoder and a fresh forward: enc(x), a new z, x_r = dec(z), x_p = dec(z_p) (the
   same z_p); L_D = alpha * (KL(enc(x_r)) + KL(enc(x_p))) + beta * L_ae, its gradient through the encoder into
   the decoder (the encoder's part is discarded, as the original's next zero_grad does).
KL is the analytic KL(q || N(0, 1)) summed over the latent, batch mean. alpha 0.25, beta 5, m 110.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from facegen_jax import errors
from facegen_jax import families
from facegen_jax import optim
from facegen_jax import state as state_lib
from facegen_jax.families import common
from facegen_jax.families import ssupergan as shared
from facegen_jax.families import vae as vae_family
from facegen_jax.nets import ssupergan as nets

GROUPS = ("encoder", "decoder")
CONTRACT = families.Contract(
    optimizer_groups=GROUPS, ema_groups=GROUPS, task="sample",
    eval_outputs={"generated": families.EvalOutput(inputs=(), reference="image")})
RECONSTRUCTION = vae_family.RECONSTRUCTION


def validate(config: ml_collections.ConfigDict) -> None:
  shared.validate_vae(config)
  c = config.intro
  if c.margin <= 0 or c.alpha < 0 or c.beta < 0:
    raise errors.ConfigError(f"config.intro: margin must be > 0, alpha and beta >= 0 (got margin {c.margin}, alpha "
                             f"{c.alpha}, beta {c.beta})")


def init(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  variables = shared.vae_network(config).init(rng, shared.example_face(config), train=False)
  return {"params": {g: variables["params"][g] for g in GROUPS},
          "collections": {g: {"batch_stats": variables["batch_stats"][g]} for g in GROUPS}}


def networks(config: ml_collections.ConfigDict) -> dict:
  m = config.model
  return {"encoder": (nets.Encoder(m.latent_dim, tuple(m.channels), m.image_size), (shared.example_face(config),)),
          "decoder": (nets.Decoder(tuple(m.channels), m.image_size), (jnp.zeros((1, m.latent_dim)),))}


class _Calls:
  """enc / dec in training mode, each call threading its network's BatchNorm statistics into the next."""

  def __init__(self, config, stats):
    m = config.model
    self._config = config
    self._encoder = nets.Encoder(m.latent_dim, tuple(m.channels), m.image_size)
    self._decoder = nets.Decoder(tuple(m.channels), m.image_size)
    self.stats = dict(stats)

  def _call(self, module, group, params, x):
    cast = functools.partial(common.to_compute, self._config)
    out, upd = module.apply({"params": cast(params), "batch_stats": self.stats[group]}, cast(x), train=True,
                            mutable=["batch_stats"])
    self.stats[group] = upd["batch_stats"]
    return common.to_float32(out)

  def enc(self, params, x):
    return self._call(self._encoder, "encoder", params, x)

  def dec(self, params, z):
    return self._call(self._decoder, "decoder", params, z)


def _ae(x_r, x):
  return 0.5 * jnp.sum(jnp.square(x_r - x), axis=(1, 2, 3)).mean()


def _kl(mu_log_std):
  return shared.kl_divergence(*mu_log_std).mean()


def encoder_objective(c: ml_collections.ConfigDict, *, kl, kl_r, kl_pp, ae) -> jax.Array:
  """L_E with config.intro `c`: the prior samples' hinge at the margin m, or at alpha with original_xp_hinge."""
  xp_margin = c.alpha if c.original_xp_hinge else c.margin
  return kl + c.alpha * (jax.nn.relu(c.margin - kl_r) + jax.nn.relu(xp_margin - kl_pp)) + c.beta * ae


def train_step(config: ml_collections.ConfigDict, state: state_lib.TrainState, batch: dict,
               rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
  c = config.intro
  txs = optim.create_all(config, GROUPS)
  x = batch["image"]
  keys = common.step_rngs(rng, "z_p", "z_encoder_step", "z_decoder_step")
  shape = (x.shape[0], config.model.latent_dim)
  z_p, noise_e, noise_d = (common.shard_over_batch(jax.random.normal(keys[k], shape)) for k in keys)
  stats = {g: state.collections[g]["batch_stats"] for g in GROUPS}

  def encoder_loss(enc_params):
    calls = _Calls(config, stats)
    dec_params = state.params["decoder"]
    x_p = calls.dec(dec_params, z_p)
    mu, log_std = calls.enc(enc_params, x)
    x_r = calls.dec(dec_params, mu + jnp.exp(log_std) * noise_e)
    ae = _ae(x_r, x)
    kl_r = _kl(calls.enc(enc_params, jax.lax.stop_gradient(x_r)))
    kl_pp = _kl(calls.enc(enc_params, jax.lax.stop_gradient(x_p)))
    kl = _kl((mu, log_std))
    loss = encoder_objective(c, kl=kl, kl_r=kl_r, kl_pp=kl_pp, ae=ae)
    return loss, (calls.stats, {"encoder/loss": loss, "encoder/kl": kl, "encoder/kl_reconstruction": kl_r,
                                "encoder/kl_prior_sample": kl_pp, "encoder/ae": ae,
                                **shared.recon_metrics("vae", x, x_r)})

  (_, (stats, metrics)), grads = jax.value_and_grad(encoder_loss, has_aux=True)(state.params["encoder"])
  state = state.update("encoder", txs["encoder"], grads)

  def decoder_loss(dec_params):
    calls = _Calls(config, stats)
    enc_params = state.params["encoder"]
    mu, log_std = calls.enc(enc_params, x)
    x_r = calls.dec(dec_params, mu + jnp.exp(log_std) * noise_d)
    x_p = calls.dec(dec_params, z_p)
    kl_r, kl_pp = _kl(calls.enc(enc_params, x_r)), _kl(calls.enc(enc_params, x_p))
    ae = _ae(x_r, x)
    loss = c.alpha * (kl_r + kl_pp) + c.beta * ae
    return loss, (calls.stats, {"decoder/loss": loss, "decoder/kl_reconstruction": kl_r,
                                "decoder/kl_prior_sample": kl_pp, "decoder/ae": ae})

  (_, (stats, decoder_metrics)), grads = jax.value_and_grad(decoder_loss, has_aux=True)(state.params["decoder"])
  state = state.update("decoder", txs["decoder"], grads)
  state = state.replace(step=state.step + 1, collections={g: {"batch_stats": stats[g]} for g in GROUPS})
  return state, {**metrics, **decoder_metrics}


def _vae_state(state: state_lib.TrainState) -> state_lib.TrainState:
  """The state as the VAE family keeps it (one group "vae"), for its sample and generate."""
  params = {"vae": {g: state.params[g] for g in GROUPS}}
  return state.replace(params=params, collections={"vae": {"batch_stats": {
      g: state.collections[g]["batch_stats"] for g in GROUPS}}}, ema={})


def sample_inputs(config: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
  return vae_family.sample_inputs(config, rng, batch)


def sample(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict) -> dict:
  """Prior samples | real faces | their reconstructions from mu (the VAE's grid)."""
  return vae_family.sample(config, _vae_state(state), inputs)


def eval_inputs(config: ml_collections.ConfigDict, rng: jax.Array, size: int, data: dict) -> dict:
  return vae_family.eval_inputs(config, rng, size, data)


def generate(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict,
             rng: jax.Array) -> dict:
  """As the VAE's: {"generated": decode(z)} and, given "image", {"reconstruction": decode(mu(image))}."""
  return vae_family.generate(config, _vae_state(state), inputs, rng)
