"""Tiny test doubles of the family shapes the real families to come will have, so the contract, the loop, the
evaluator and the inference commands are tested on them before those families exist (they never enter FAMILIES;
tests register them with `monkeypatch.setitem(families.FAMILIES, ...)`):

  tiny_vae         one optimizer group ("vae"), no discriminator, a Gaussian decoder sampled from z (VAE-like)
  tiny_translator  two generators {"a2b", "b2a"} in group "g", four discriminators in group "d", a frozen
                   identity network (params without an optimizer), a step-owned value in `extra` (ADA's p),
                   two-domain batches, eval outputs "a2b" and "b2a"
  tiny_inpainter   a frozen first stage ("coarse") and a trained refinement ("refine") with a frozen pattern
                   inside it; inputs are an image and a mask (1 = hole); the output is the composite

Networks are small dense layers on 32x32 images: what is tested here is the plumbing, not a model.
"""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from configs import presets
from facegen_jax import base_config
from facegen_jax import families
from facegen_jax import losses
from facegen_jax import optim
from input_pipeline import pipeline

SIZE = 32


class _Mlp(nn.Module):
  """Image (B, 32, 32, 3) or vector -> `features` (reshaped to an image when features == 32*32*3)."""
  features: int
  hidden: int = 16

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    x = nn.Dense(self.features)(x)
    return jnp.tanh(x).reshape(x.shape[0], SIZE, SIZE, 3) if self.features == SIZE * SIZE * 3 else x


_IMAGE = SIZE * SIZE * 3


def _tiny_base(family: str) -> ml_collections.ConfigDict:
  config = base_config.base_config()
  config.family = family
  presets.tiny(config, batch_size=4, resolution=SIZE)
  config.input.synthetic.num_examples = 16
  return config


def _sample_inputs_from_images(config, batch, key: str = "image") -> dict:
  return {"image": jnp.asarray(batch[key][:config.num_sample_images])}


# --- tiny_vae: no discriminator. ---

def _vae_config() -> ml_collections.ConfigDict:
  config = _tiny_base("tiny_vae")
  config.model = ml_collections.ConfigDict(dict(z_dim=8))
  config.optim.vae = optim.config(lr=1e-2)
  return config


def _vae_init(config, rng):
  e_rng, d_rng = jax.random.split(rng)
  encoder = _Mlp(2 * config.model.z_dim).init(e_rng, jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  decoder = _Mlp(_IMAGE).init(d_rng, jnp.zeros((1, config.model.z_dim)))["params"]
  return {"params": {"vae": {"encoder": encoder, "decoder": decoder}}}


def _vae_train_step(config, state, batch, rng):
  z_dim = config.model.z_dim

  def loss_fn(params):
    stats = _Mlp(2 * z_dim).apply({"params": params["encoder"]}, batch["image"])
    mu, logvar = stats[:, :z_dim], stats[:, z_dim:]
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape)
    recon = _Mlp(_IMAGE).apply({"params": params["decoder"]}, z)
    rec = jnp.mean(jnp.square(recon - batch["image"]))
    kld = -0.5 * jnp.mean(1 + logvar - jnp.square(mu) - jnp.exp(logvar))
    return rec + 1e-3 * kld, {"vae/reconstruction": rec, "vae/kld": kld}

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["vae"])
  state = state.update("vae", optim.create(config, "vae"), grads)
  return state.replace(step=state.step + 1), {**metrics, "vae/loss": loss}


def _vae_generate(config, state, inputs, rng):
  del rng
  return {"generated": _Mlp(_IMAGE).apply({"params": state.params["vae"]["decoder"]}, inputs["z"])}


tiny_vae = types.SimpleNamespace(
    __name__="tiny_vae",
    CONTRACT=families.Contract(optimizer_groups=("vae",), ema_groups=("vae",), task="sample",
                               eval_outputs={"generated": families.EvalOutput()}),
    get_config=_vae_config,
    validate=lambda config: None,
    init=_vae_init,
    train_step=_vae_train_step,
    sample_inputs=lambda config, rng, batch: {"z": jax.random.normal(rng, (config.num_sample_images,
                                                                           config.model.z_dim))},
    sample=lambda config, state, inputs: _vae_generate(config, state, inputs, None),
    eval_inputs=lambda config, rng, size, data: {"z": jax.random.normal(rng, (size, config.model.z_dim))},
    generate=_vae_generate,
    networks=lambda config: {"encoder": (_Mlp(2 * config.model.z_dim), (jnp.zeros((1, SIZE, SIZE, 3)),)),
                             "decoder": (_Mlp(_IMAGE), (jnp.zeros((1, config.model.z_dim)),))},
)


# --- tiny_translator: two generators, four discriminators, a frozen network, a step-owned value. ---

_DISCRIMINATORS = ("a_global", "a_local", "b_global", "b_local")


def _translator_config() -> ml_collections.ConfigDict:
  config = _tiny_base("tiny_translator")
  config.input.domains = ("a", "b")
  config.input.a = pipeline.domain_config()
  config.input.b = pipeline.domain_config()
  config.input.a.synthetic.num_examples = 12
  config.input.b.synthetic.num_examples = 20
  config.optim.g = optim.config(lr=1e-2, b1=0.5)
  config.optim.d = optim.config(lr=1e-2, b1=0.5)
  config.gan_loss = "lsgan"
  return config


def _translator_init(config, rng):
  keys = jax.random.split(rng, 7)
  image = jnp.zeros((1, SIZE, SIZE, 3))
  g = {name: _Mlp(_IMAGE).init(k, image)["params"] for name, k in zip(("a2b", "b2a"), keys[:2])}
  d = {name: _Mlp(1).init(k, image)["params"] for name, k in zip(_DISCRIMINATORS, keys[2:6])}
  identity = _Mlp(4).init(keys[6], image)["params"]
  return {"params": {"g": g, "d": d, "identity": identity}, "extra": {"ada_p": jnp.zeros((), jnp.float32)}}


def _translator_train_step(config, state, batch, rng):
  del rng
  real_a, real_b = batch["a/image"], batch["b/image"]
  mlp, critic = _Mlp(_IMAGE), _Mlp(1)

  def d_logits(d, name, x):
    return critic.apply({"params": d[name]}, x)

  fake_b = mlp.apply({"params": state.params["g"]["a2b"]}, real_a)
  fake_a = mlp.apply({"params": state.params["g"]["b2a"]}, real_b)

  def d_loss_fn(d):
    total = 0.0
    for name in _DISCRIMINATORS:
      real, fake = (real_a, fake_a) if name.startswith("a") else (real_b, fake_b)
      total += losses.discriminator_loss(config.gan_loss, real_logits=d_logits(d, name, real),
                                         fake_logits=d_logits(d, name, jax.lax.stop_gradient(fake)))
    return total

  d_loss, d_grads = jax.value_and_grad(d_loss_fn)(state.params["d"])
  state = state.update("d", optim.create(config, "d"), d_grads)

  def g_loss_fn(g):
    fb = mlp.apply({"params": g["a2b"]}, real_a)
    fa = mlp.apply({"params": g["b2a"]}, real_b)
    adv = sum(losses.generator_loss(config.gan_loss, fake_logits=d_logits(state.params["d"], name,
                                                                         fa if name.startswith("a") else fb))
              for name in _DISCRIMINATORS)
    ident = _Mlp(4).apply({"params": state.params["identity"]}, fb)
    identity = jnp.mean(jnp.square(ident - _Mlp(4).apply({"params": state.params["identity"]}, real_a)))
    cycle = jnp.mean(jnp.abs(mlp.apply({"params": g["b2a"]}, fb) - real_a))
    return adv + 10 * cycle + identity, cycle

  (g_loss, cycle), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.params["g"])
  state = state.update("g", optim.create(config, "g"), g_grads)
  # ADA-like: p follows the sign of D's overfitting, clipped to [0, 1], owned by the step.
  ada_p = jnp.clip(state.extra["ada_p"] + 0.01 * jnp.sign(d_loss), 0.0, 1.0)
  state = state.replace(step=state.step + 1, extra={**state.extra, "ada_p": ada_p})
  return state, {"d/loss": d_loss, "g/loss": g_loss, "g/cycle": cycle, "train/ada_p": ada_p}


def _translator_generate(config, state, inputs, rng):
  del config, rng
  mlp = _Mlp(_IMAGE)
  out = {}
  if "a/image" in inputs:
    out["a2b"] = mlp.apply({"params": state.params["g"]["a2b"]}, inputs["a/image"])
  if "b/image" in inputs:
    out["b2a"] = mlp.apply({"params": state.params["g"]["b2a"]}, inputs["b/image"])
  return out


tiny_translator = types.SimpleNamespace(
    __name__="tiny_translator",
    CONTRACT=families.Contract(
        optimizer_groups=("g", "d"), ema_groups=("g",), task="translate",
        eval_outputs={"a2b": families.EvalOutput(inputs=("a/image",), reference="b/image"),
                      "b2a": families.EvalOutput(inputs=("b/image",), reference="a/image")}),
    get_config=_translator_config,
    validate=lambda config: None,
    init=_translator_init,
    train_step=_translator_train_step,
    sample_inputs=lambda config, rng, batch: {k: jnp.asarray(batch[k][:config.num_sample_images])
                                              for k in ("a/image", "b/image")},
    sample=lambda config, state, inputs: {**inputs, **_translator_generate(config, state, inputs, None)},
    eval_inputs=lambda config, rng, size, data: dict(data),
    generate=_translator_generate,
    networks=lambda config: {
        "generator_a2b": (_Mlp(_IMAGE), (jnp.zeros((1, SIZE, SIZE, 3)),)),
        **{f"discriminator_{n}": (_Mlp(1), (jnp.zeros((1, SIZE, SIZE, 3)),)) for n in _DISCRIMINATORS}},
)


# --- tiny_inpainter: a frozen first stage, a refinement with a frozen pattern, masks as input. ---

def _inpainter_config() -> ml_collections.ConfigDict:
  config = _tiny_base("tiny_inpainter")
  config.optim.refine = optim.config(lr=1e-2, frozen=("embed/.*",))
  return config


def _inpainter_init(config, rng):
  c_rng, e_rng, r_rng = jax.random.split(rng, 3)
  image = jnp.zeros((1, SIZE, SIZE, 3))
  return {"params": {"coarse": _Mlp(_IMAGE).init(c_rng, image)["params"],
                     "refine": {"embed": _Mlp(_IMAGE).init(e_rng, image)["params"],
                                "head": _Mlp(_IMAGE).init(r_rng, image)["params"]}}}


def _centre_mask(shape) -> jax.Array:
  """(B, H, W, 1), 1 on the centre quarter: TFill's centre-box mask."""
  b, h, w = shape[:3]
  rows = (jnp.arange(h) >= h // 4) & (jnp.arange(h) < 3 * h // 4)
  cols = (jnp.arange(w) >= w // 4) & (jnp.arange(w) < 3 * w // 4)
  return jnp.broadcast_to((rows[:, None] & cols[None, :])[None, :, :, None], (b, h, w, 1)).astype(jnp.float32)


def _inpaint(params, image, mask):
  mlp = _Mlp(_IMAGE)
  masked = image * (1 - mask)
  coarse = mlp.apply({"params": params["coarse"]}, masked)
  refined = mlp.apply({"params": params["refine"]["head"]},
                      coarse + mlp.apply({"params": params["refine"]["embed"]}, masked))
  return mask * refined + (1 - mask) * image


def _inpainter_train_step(config, state, batch, rng):
  del rng
  image = batch["image"]
  mask = batch.get("mask", _centre_mask(image.shape))

  def loss_fn(refine):
    out = _inpaint({**state.params, "refine": refine}, image, mask)
    return jnp.mean(jnp.abs(out - image))

  loss, grads = jax.value_and_grad(loss_fn)(state.params["refine"])
  state = state.update("refine", optim.create(config, "refine"), grads)
  return state.replace(step=state.step + 1), {"refine/l1": loss}


def _inpainter_generate(config, state, inputs, rng):
  del config, rng
  mask = inputs.get("mask")
  if mask is None:
    mask = _centre_mask(inputs["image"].shape)
  return {"inpainted": _inpaint(state.params, inputs["image"], mask)}


tiny_inpainter = types.SimpleNamespace(
    __name__="tiny_inpainter",
    CONTRACT=families.Contract(optimizer_groups=("refine",), ema_groups=(), task="inpaint",
                               eval_outputs={"inpainted": families.EvalOutput(inputs=("image",), reference="image")}),
    get_config=_inpainter_config,
    validate=lambda config: None,
    init=_inpainter_init,
    train_step=_inpainter_train_step,
    sample_inputs=lambda config, rng, batch: _sample_inputs_from_images(config, batch),
    sample=lambda config, state, inputs: {"real": inputs["image"],
                                          **_inpainter_generate(config, state, inputs, None)},
    eval_inputs=lambda config, rng, size, data: dict(data),
    generate=_inpainter_generate,
    networks=lambda config: {"coarse": (_Mlp(_IMAGE), (jnp.zeros((1, SIZE, SIZE, 3)),))},
)

DOUBLES = {"tiny_vae": tiny_vae, "tiny_translator": tiny_translator, "tiny_inpainter": tiny_inpainter}
