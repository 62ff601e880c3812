"""SSuper-DCGAN: the panel-sequence encoder with a DCGAN generator and a local DCGAN discriminator on the face
(SSuperGAN's networks/models.py SSuperDCGAN at e979e94, the seed's ssuper_dcgan_config.yaml).

Parameter groups: "encoder" (the backbone and the sequence encoder: EfficientNet-b5 -> embed 1024, a
bidirectional LSTM 2 x 512, latent 512), "g" (the DCGAN generator, ngf 64) and "d" (the local D, ndf 64), each with
its own optimizer and clipping (encoder Adam with torch's default betas, G and D Adam(0.5, 0.999); 2e-4, no weight
decay, no schedule, global norm 100 per network, as the seed). BatchNorm statistics in collections[group].

One step (z = mu + exp(log_std) * noise; fake = G(z)):
  D: BCE(D(cat[real, sg(fake)]), [1] * B + [0] * B): real and fake in ONE D batch, so they share its BatchNorm
     statistics, as the original's single call.
  G and encoder: ELBO(real face; fake, mu, log_std) + BCE(D(fake), 1), D in training mode on the fakes alone.
By default D is updated first and the G loss is taken against the updated D (separate updates). The original
sums ELBO + errD + errG and back-propagates once, so D's gradient also holds errG's (pushing D to call fakes real)
and every network steps from the same forward: `config.gan.original_single_backward = True` restores that.

Task "complete", eval output "face" (G(mu) in eval mode) against the real face, with eval/face_mse and
eval/face_psnr; the sample grid is context panels | masked panel | G(mu) | real face.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from facegen_jax import errors
from facegen_jax import families
from facegen_jax import optim
from facegen_jax import state as state_lib
from facegen_jax.families import common
from facegen_jax.families import ssupergan as shared

GROUPS = ("encoder", "g", "d")
_ENCODER_PARTS = ("backbone", "sequence_encoder")
CONTRACT = families.Contract(
    optimizer_groups=GROUPS, ema_groups=("encoder", "g"), task="complete",
    # "image" (the real face) is read for eval_scores only; the face is generated from the panels.
    eval_outputs={"face": families.EvalOutput(inputs=("panels", "image"), reference="image")})


def validate(config: ml_collections.ConfigDict) -> None:
  shared.validate_ssuper(config)
  if shared.face_size(config) != 64:
    raise errors.ConfigError(f"SSuper-DCGAN's generator and local D work on 64 px faces; config.input.resolution is "
                             f"{shared.face_size(config)}: set --config.input.resolution=64")


def _models(config):
  return shared.ssuper_dcgan(config)


def init(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  generator_side, discriminator = _models(config)
  g_rng, d_rng = jax.random.split(rng)
  variables = generator_side.init(g_rng, shared.example_panels(config), train=False)
  variables = shared.with_backbone_weights(config, variables)
  d_vars = discriminator.init(d_rng, jnp.zeros((1, 64, 64, 3)), train=False)
  params, stats = variables["params"], variables["batch_stats"]
  return {"params": {"encoder": {k: params[k] for k in _ENCODER_PARTS}, "g": {"generator": params["generator"]},
                     "d": d_vars["params"]},
          "collections": {"encoder": {"batch_stats": {"backbone": stats["backbone"]}},
                          "g": {"batch_stats": {"generator": stats["generator"]}},
                          "d": {"batch_stats": d_vars["batch_stats"]}}}


def networks(config: ml_collections.ConfigDict) -> dict:
  generator_side, discriminator = _models(config)
  return {"ssuper_dcgan": (generator_side, (shared.example_panels(config),)),
          "discriminator": (discriminator, (jnp.zeros((1, 64, 64, 3)),))}


def _generator_variables(params: dict, collections: dict) -> dict:
  """SSuperDCGAN's variables from the "encoder" and "g" groups."""
  return {"params": {**params["encoder"], **params["g"]},
          "batch_stats": {**collections["encoder"]["batch_stats"], **collections["g"]["batch_stats"]}}


def _split_stats(batch_stats: dict) -> dict:
  return {"encoder": {"batch_stats": {"backbone": batch_stats["backbone"]}},
          "g": {"batch_stats": {"generator": batch_stats["generator"]}}}


def _bce(logits, label: float):
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)).mean()


def train_step(config: ml_collections.ConfigDict, state: state_lib.TrainState, batch: dict,
               rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
  generator_side, discriminator = _models(config)
  txs = optim.create_all(config, GROUPS)
  panels, real = batch["panels"], batch["image"]
  keys = common.step_rngs(rng, "z", "dropout")
  noise = common.shard_over_batch(jax.random.normal(keys["z"], (real.shape[0], config.model.latent_dim)))
  cast = lambda tree: common.to_compute(config, tree)  # pylint: disable=unnecessary-lambda-assignment

  def gen_forward(enc_params, g_params):
    variables = _generator_variables({"encoder": enc_params, "g": g_params}, state.collections)
    out, upd = generator_side.apply(cast(variables), cast(panels), cast(noise), train=True, mutable=["batch_stats"],
                                    rngs={"dropout": keys["dropout"]})
    out = common.to_float32(out)
    return (out.image, out.mu, out.log_std), upd["batch_stats"]

  def d_forward(d_params, d_stats, x):
    logits, upd = discriminator.apply(cast({"params": d_params, "batch_stats": d_stats}), cast(x), train=True,
                                      mutable=["batch_stats"])
    return common.to_float32(logits), upd["batch_stats"]

  def d_loss_fn(d_params, fake):
    """BCE of D on cat[real, sg(fake)] in one batch, labels [1] * B + [0] * B (the original's errD)."""
    logits, d_stats = d_forward(d_params, state.collections["d"]["batch_stats"],
                                jnp.concatenate([real, jax.lax.stop_gradient(fake)]))
    real_logits, fake_logits = jnp.split(logits, 2)
    loss = 0.5 * (_bce(real_logits, 1.0) + _bce(fake_logits, 0.0))
    return loss, (d_stats, real_logits, fake_logits)

  def g_loss_fn(d_params, d_stats, fake, mu, log_std):
    """ELBO of the real face + BCE(D(fake), 1) (errE + errG)."""
    logits, d_stats = d_forward(d_params, d_stats, fake)
    terms = shared.elbo(config, real, fake, mu, log_std)
    err_g = _bce(logits, 1.0)
    return terms["loss"] + err_g, (d_stats, terms, err_g, logits)

  d_params = state.params["d"]
  if config.gan.original_single_backward:
    def total(enc_params, g_params, d_params):
      (fake, mu, log_std), gen_stats = gen_forward(enc_params, g_params)
      err_d, (d_stats, real_logits, fake_logits) = d_loss_fn(d_params, fake)
      rest, (d_stats, terms, err_g, g_logits) = g_loss_fn(d_params, d_stats, fake, mu, log_std)
      return err_d + rest, (gen_stats, d_stats, err_d, real_logits, fake_logits, terms, err_g, g_logits, fake)
    (_, aux), grads = jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(
        state.params["encoder"], state.params["g"], d_params)
    gen_stats, d_stats, err_d, real_logits, fake_logits, terms, err_g, g_logits, fake = aux
    for group, grad in zip(GROUPS, grads):
      state = state.update(group, txs[group], grad)
  else:
    (fake, mu, log_std), gen_vjp, gen_stats = jax.vjp(gen_forward, state.params["encoder"], state.params["g"],
                                                      has_aux=True)
    (err_d, (d_stats, real_logits, fake_logits)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params,
                                                                                                      fake)
    state = state.update("d", txs["d"], d_grads)
    (_, (d_stats, terms, err_g, g_logits)), cotangents = jax.value_and_grad(
        g_loss_fn, argnums=(2, 3, 4), has_aux=True)(state.params["d"], d_stats, fake, mu, log_std)
    enc_grads, g_grads = gen_vjp(cotangents)
    state = state.update("encoder", txs["encoder"], enc_grads).update("g", txs["g"], g_grads)

  collections = {**_split_stats(gen_stats), "d": {"batch_stats": d_stats}}
  metrics = {"g/loss": err_g, "g/elbo": terms["loss"], "g/nll": terms["nll"], "g/kl": terms["kl"], "d/loss": err_d,
             "d/real_prob": jax.nn.sigmoid(real_logits).mean(), "d/fake_prob": jax.nn.sigmoid(fake_logits).mean(),
             "g/fake_prob": jax.nn.sigmoid(g_logits).mean(), **shared.recon_metrics("g", real, fake)}
  return state.replace(step=state.step + 1, collections=collections), metrics


def sample_inputs(config: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
  del rng
  return shared.sample_batch(config, batch, ("panels", "image"))


def _complete(config, state, panels):
  """G(mu) in eval mode (BatchNorm's running statistics): the original's reconstruct."""
  generator_side, _ = _models(config)
  return generator_side.apply(_generator_variables(state.params, state.collections), panels, train=False).image


def sample(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict) -> dict:
  """Context panels | masked panel | G(mu) ("predicted") | real face (grids go in sorted key order)."""
  return {**shared.panels_grid(config, inputs["panels"]), "predicted": _complete(config, state, inputs["panels"]),
          "real": inputs["image"]}


def eval_inputs(config: ml_collections.ConfigDict, rng: jax.Array, size: int, data: dict) -> dict:
  del config, rng, size
  return dict(data)


def generate(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict,
             rng: jax.Array) -> dict:
  """{"face": G(mu)} in eval mode, in [-1, 1] (tanh)."""
  del rng
  return {"face": _complete(config, state, inputs["panels"])}


def eval_scores(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict, generated: dict,
                output: str) -> dict:
  """eval/face_mse and eval/face_psnr: the completed face against the real one, per held-out sequence."""
  del config, state
  return shared.completion_scores(inputs, generated, output)
