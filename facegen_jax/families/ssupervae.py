"""PlainSSuperVAE: the masked face of a comic panel from its sequence (SSuperGAN's networks/ssupervae.py, a4d7a60).

Batches are panel records (config.input.record = "panels"): "panels" (B, S, P, P, 3), the target last with its
face painted white, and "image" the real target face. The network (`nets.ssupergan.PlainSSuperVAE`): an
EfficientNet per panel (config.model.backbone, a fresh fc to embed_dim), a plain (concatenated) or LSTM
(configs/ssupervae.py:lstm) sequence encoder to q(z | panels), the IntroVAE decoder. One parameter group "vae"
(backbone, sequence_encoder, decoder; BatchNorm statistics in collections["vae"]["batch_stats"]) with one
optimizer over everything, backbone included (the seed's Adam, weight decay, linear decay, clip 100). The loss is
the ELBO of the target face (families/ssupergan.py); the backbone's dropout and drop-connect and the LSTM's
dropout draw from the step's "dropout" key. With config.model.backbone_weights the backbone starts from ImageNet
(read at init by a host callback), else from a random init, said in the log.

Task "complete": the eval output "face" is decoded from mu in eval mode and scored against the real face (FID,
and eval/face_mse, eval/face_psnr of the target face on held-out sequences). `generate --panels SEQ_DIR` writes
it per sequence. Sample grid: context panels (resized to the face size) | the masked panel | the face from mu |
the real face.
"""

import jax
import ml_collections

from facegen_jax import families
from facegen_jax import optim
from facegen_jax import state as state_lib
from facegen_jax.families import common
from facegen_jax.families import ssupergan as shared

CONTRACT = families.Contract(
    optimizer_groups=("vae",), ema_groups=("vae",), task="complete",
    # "image" (the real face) is read for eval_scores only; the face is generated from the panels.
    eval_outputs={"face": families.EvalOutput(inputs=("panels", "image"), reference="image")})


def validate(config: ml_collections.ConfigDict) -> None:
  shared.validate_ssuper(config)
  shared.validate_vae(config)


def init(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  variables = shared.plain_ssupervae(config).init(rng, shared.example_panels(config), train=False)
  variables = shared.with_backbone_weights(config, variables)
  return {"params": {"vae": variables["params"]}, "collections": {"vae": {"batch_stats": variables["batch_stats"]}}}


def networks(config: ml_collections.ConfigDict) -> dict:
  return {"ssupervae": (shared.plain_ssupervae(config), (shared.example_panels(config),))}


def train_step(config: ml_collections.ConfigDict, state: state_lib.TrainState, batch: dict,
               rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
  model = shared.plain_ssupervae(config)
  tx = optim.create(config, "vae")
  panels, face = batch["panels"], batch["image"]
  keys = common.step_rngs(rng, "z", "dropout")
  noise = common.shard_over_batch(jax.random.normal(keys["z"], (face.shape[0], config.model.latent_dim)))

  def loss_fn(params):
    out, upd = model.apply({"params": common.to_compute(config, params), **state.collections["vae"]},
                           common.to_compute(config, panels), common.to_compute(config, noise), train=True,
                           mutable=["batch_stats"], rngs={"dropout": keys["dropout"]})
    out = common.to_float32(out)
    terms = shared.elbo(config, face, out.image, out.mu, out.log_std)
    return terms["loss"], (upd, terms, out.image)

  (_, (upd, terms, image)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["vae"])
  state = state.update("vae", tx, grads).with_collections("vae", {"batch_stats": upd["batch_stats"]})
  metrics = {f"vae/{k}": v for k, v in terms.items()}
  metrics.update(shared.recon_metrics("vae", face, image))
  return state.replace(step=state.step + 1), metrics


def sample_inputs(config: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
  del rng
  return shared.sample_batch(config, batch, ("panels", "image"))


def _complete(config, state, panels):
  return shared.plain_ssupervae(config).apply({"params": state.params["vae"], **state.collections["vae"]}, panels,
                                              train=False).image


def sample(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict) -> dict:
  """Context panels | masked panel | the face from mu ("predicted") | real face (grids go in sorted key order)."""
  return {**shared.panels_grid(config, inputs["panels"]),
          "predicted": shared.clip_images(_complete(config, state, inputs["panels"])), "real": inputs["image"]}


def eval_inputs(config: ml_collections.ConfigDict, rng: jax.Array, size: int, data: dict) -> dict:
  del config, rng, size
  return dict(data)


def generate(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict,
             rng: jax.Array) -> dict:
  """{"face": the decoder's raw output from mu} (eval mode; the original's reconstruct)."""
  del rng
  return {"face": _complete(config, state, inputs["panels"])}


def eval_scores(config: ml_collections.ConfigDict, state: state_lib.TrainState, inputs: dict, generated: dict,
                output: str) -> dict:
  """eval/face_mse and eval/face_psnr: the completed face against the real one, per held-out sequence."""
  del config, state
  return shared.completion_scores(inputs, generated, output)
