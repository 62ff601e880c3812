"""SSuperGAN checkpoint (VAE, IntroVAE, PlainSSuperVAE or SSuper-DCGAN) -> flax variables in a directory.

  python -m facegen_jax.convert ssupergan --model plain_ssupervae --checkpoint plain_ssupervae-checkpoint-epoch100.pth \
      --out runs/ssupervae [--backbone efficientnet-b5] [--panel_size 300]

The file is what barisbatuhan/SSuperGAN's trainers write (`BaseTrainer.save_checkpoint`: {epoch,
model_state_dict, loss, <optimizers>, <schedulers>}), read by `torch_reader` (torch is not needed); a bare
state_dict works too, and DataParallel's `module.` prefix (SSuper-DCGAN's `parallel`) is dropped. Models and
their state_dict prefixes: vae / intro_vae = networks/intro_vae.py's IntroVAE (encoder.main..., decoder.main...;
a4d7a60), plain_ssupervae = networks/ssupervae.py's SSuperVAE (encoder.embedder.model = the EfficientNet,
encoder.fc_mean / fc_lgstd / lstm, decoder; a4d7a60), ssuper_dcgan = networks/models.py's SSuperDCGAN
(seq_encoder..., generator.model..., local_discriminator.model...; e979e94).

From the shapes: latent size, channels and image size of the IntroVAE network; plain or LSTM sequence encoder,
its hidden size, directions and layers, the embedding size and the number of panels of the plain one; the DCGAN
widths. From flags: the backbone variant (`--backbone`: its static "same" padding is the variant's, and its
parameters must have that variant's shapes) and the panel size the model runs at (`--panel_size`). Not in a
checkpoint, so the original's defaults: masked panel first, LSTM dropout 0.

Every key must be used and every variable filled, or a one-line UserError names the keys (`torch_map`). Output:
a run directory of the family (vae, intro_vae, ssupervae, ssuper_dcgan): DIR/config.json (configs/<family>.py's
real config, `ssupervae.py:lstm` for an LSTM SSuperVAE, with the checkpoint's sizes, --backbone and
--panel_size) and a step-0 checkpoint with fresh optimizers, which `generate --workdir DIR` uses (--images,
--num, --panels) and `main --workdir DIR` fine-tunes; beside them `DIR/variables.npz` ("<network>/<collection>/
<module path>/<leaf>" arrays) and `DIR/model.json` (the model name and `settings`, the keyword arguments of
`networks_for`), which `load(DIR)` reads back.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, NamedTuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax import npz
from facegen_jax.convert import torch_map
from facegen_jax.convert import torch_reader
from facegen_jax.errors import UserError
from facegen_jax.nets import ssupergan as nets

MODELS = ("vae", "intro_vae", "plain_ssupervae", "ssuper_dcgan")
_HINT = ("Was it written by SSuperGAN's trainers (save_checkpoint: <save_dir>/ckpts/<model_name>-checkpoint-"
         "epoch<N>.pth) for the --model given?")
# The torch prefix of each model's backbone (efficientnet_pytorch's EfficientNet inside CNNEmbedder).
_BACKBONE_PREFIX = {"plain_ssupervae": "encoder.embedder.model.", "ssuper_dcgan": "seq_encoder.embedder.model."}
_SEQUENCE_PREFIX = {"plain_ssupervae": "encoder.", "ssuper_dcgan": "seq_encoder."}
_DCGAN_G = {"conv_0": "0", "bn_0": "1", "conv_1": "3", "bn_1": "4", "conv_2": "6", "bn_2": "7", "conv_3": "9",
            "bn_3": "10", "conv_4": "12"}
_DCGAN_D = {"conv_0": "0", "conv_1": "2", "bn_1": "3", "conv_2": "5", "bn_2": "6", "conv_3": "8", "bn_3": "9",
            "conv_4": "11"}
VARIABLES_FILE, MODEL_FILE = "variables.npz", "model.json"


def add_arguments(parser) -> None:
  parser.add_argument("--model", required=True, choices=MODELS, help="which SSuperGAN model the checkpoint holds")
  parser.add_argument("--checkpoint", required=True,
                      help="the trainer's checkpoint, e.g. playground/ssupervae/ckpts/<name>-checkpoint-epoch100.pth")
  parser.add_argument("--out", required=True, help="the directory to write (variables.npz + model.json)")
  parser.add_argument("--backbone", default="efficientnet-b5",
                      help="the panel embedder's EfficientNet variant (default efficientnet-b5, the original's)")
  parser.add_argument("--panel_size", type=int, default=300, help="the panels' size in pixels (default 300)")


def run(args) -> None:
  converted = convert(args.model, args.checkpoint, args.out, backbone=args.backbone, panel_size=args.panel_size)
  settings = ", ".join(f"{k} {v}" for k, v in converted.settings.items())
  counts = ", ".join(f"{name} {_count(v.get('params', {})):,}" for name, v in converted.variables.items())
  print(f"wrote {args.out}: {args.model} ({settings}); parameters: {counts}")


def _count(tree) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


class Converted(NamedTuple):
  model: str
  settings: dict[str, Any]  # networks_for's keyword arguments
  variables: dict[str, dict]  # {network: {collection: tree}}


# --- the modules ---


def _efficientnet(variant: str, num_classes: int):
  from facegen_jax.nets import efficientnet  # pylint: disable=g-import-not-at-top
  return efficientnet.EfficientNet(variant=variant, num_classes=num_classes)


def networks_for(model: str, **settings) -> dict[str, Any]:
  """{network name: flax module} of a model from `detect`'s settings (the same names as `Converted.variables`)."""
  if model in ("vae", "intro_vae"):
    return {"vae": nets.VAE(settings["latent_dim"], tuple(settings["channels"]), settings["image_size"])}
  backbone = _efficientnet(settings["backbone"], settings["embed_dim"])
  sequence = {k: settings[k] for k in ("latent_dim", "use_lstm", "lstm_hidden", "bidirectional", "num_layers")}
  if model == "plain_ssupervae":
    return {"ssupervae": nets.PlainSSuperVAE(backbone, channels=tuple(settings["channels"]),
                                             image_size=settings["image_size"], **sequence)}
  return {"ssuper_dcgan": nets.SSuperDCGAN(backbone, ngf=settings["ngf"], **sequence),
          "discriminator": nets.DCGANDiscriminator(settings["ndf"])}


def example_inputs(model: str, settings: dict) -> dict[str, jax.ShapeDtypeStruct]:
  """One input per network, for `init`."""
  if model in ("vae", "intro_vae"):
    return {"vae": jax.ShapeDtypeStruct((1, settings["image_size"], settings["image_size"], 3), jnp.float32)}
  size = settings["panel_size"]
  panels = jax.ShapeDtypeStruct((1, settings["seq_size"], size, size, 3), jnp.float32)
  if model == "plain_ssupervae":
    return {"ssupervae": panels}
  return {"ssuper_dcgan": panels, "discriminator": jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)}


def abstract_variables(model: str, settings: dict) -> dict[str, dict]:
  """{network: {collection: tree of ShapeDtypeStruct}}, at no cost (jax.eval_shape of each init)."""
  modules, inputs = networks_for(model, **settings), example_inputs(model, settings)
  return {name: jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), inputs[name])
          for name, module in modules.items()}


# --- key tables ---


def _intro_vae_module(path: tuple[str, ...]) -> str:
  """IntroVAE's Encoder/Decoder names: main.0/main.1 (the first conv and BN), main.res_in_<size>, fc / fc.0,
  main.predict."""
  part, head, *rest = path
  if part == "encoder":
    head = {"conv_in": "main.0", "bn_in": "main.1", "fc": "fc"}.get(head, f"main.{head}")
  else:
    head = "fc.0" if head == "fc" else f"main.{head}"
  return ".".join([part, head, *rest])


def _module_name(model: str):
  """The torch prefix of a flax module path of `model`'s networks (the network's name first)."""
  def name(path: tuple[str, ...]) -> str:
    network, *path = path
    if network == "vae":
      return _intro_vae_module(tuple(path))
    if network == "discriminator":
      return f"local_discriminator.model.{_DCGAN_D[path[0]]}"
    head, *rest = path
    if head == "sequence_encoder":
      return _SEQUENCE_PREFIX[model] + ".".join(rest)
    if head == "decoder":
      return _intro_vae_module(("decoder", *rest))
    if head == "generator":
      return f"generator.model.{_DCGAN_G[rest[0]]}"
    raise ValueError(f"no torch name for {'/'.join((network, *path))}")
  return name


def key_table(model: str) -> torch_map.KeyTable:
  return torch_map.KeyTable(module_name=_module_name(model), conv_transpose=(r"ssuper_dcgan/generator/conv_\d",))


# --- detection ---


def _need(state_dict, key: str, source, model: str) -> tuple[int, ...]:
  if key not in state_dict:
    found = ", ".join(sorted(state_dict)[:4]) + (", ..." if len(state_dict) > 4 else "")
    raise UserError(f"{source} has no {key}: not an SSuperGAN {model} checkpoint (it holds {found}). {_HINT}")
  return tuple(state_dict[key].shape)


def _blocks(state_dict, prefix: str) -> dict[int, int]:
  """{size: output channels} of the residual blocks `<prefix>res_in_<size>`."""
  pattern = re.compile(re.escape(prefix) + r"res_in_(\d+)\.conv1\.weight")
  return {int(m[1]): int(v.shape[0]) for k, v in state_dict.items() if (m := pattern.fullmatch(k))}


def _decoder_settings(state_dict, source, model: str, prefix: str = "decoder.") -> dict:
  """channels and image_size of an IntroVAE Decoder, from its blocks res_in_4 ... res_in_<image_size>."""
  latent = _need(state_dict, f"{prefix}fc.0.weight", source, model)[1]
  blocks = _blocks(state_dict, f"{prefix}main.")
  if not blocks:
    _need(state_dict, f"{prefix}main.res_in_4.conv1.weight", source, model)
  sizes = sorted(blocks)
  channels = [blocks[s] for s in reversed(sizes[:-1])]  # The last block keeps channels[0].
  return dict(latent_dim=int(latent), channels=channels, image_size=sizes[-1])


def _sequence_settings(state_dict, source, model: str) -> dict:
  prefix = _SEQUENCE_PREFIX[model]
  latent, features = _need(state_dict, f"{prefix}fc_mean.weight", source, model)
  embed = _need(state_dict, f"{_BACKBONE_PREFIX[model]}_fc.weight", source, model)[0]
  use_lstm = f"{prefix}lstm.weight_ih_l0" in state_dict
  settings = dict(latent_dim=int(latent), embed_dim=int(embed), use_lstm=use_lstm, lstm_hidden=256,
                  bidirectional=False, num_layers=1, seq_size=3)
  if not use_lstm:
    if features % embed:
      raise UserError(f"{source}: {prefix}fc_mean takes {features} features, not a multiple of the embedding "
                      f"size {embed}. {_HINT}")
    settings["seq_size"] = int(features // embed)
  else:
    bidirectional = f"{prefix}lstm.weight_ih_l0_reverse" in state_dict
    layers = len([k for k in state_dict if re.fullmatch(re.escape(prefix) + r"lstm\.weight_ih_l\d+", k)])
    hidden = state_dict[f"{prefix}lstm.weight_hh_l0"].shape[1] * (2 if bidirectional else 1)
    settings.update(lstm_hidden=int(hidden), bidirectional=bidirectional, num_layers=layers)
  return settings


def detect(model: str, state_dict, source="the state_dict", *, backbone: str = "efficientnet-b5",
           panel_size: int = 300) -> dict:
  """`networks_for`'s settings for the state_dict's shapes (+ backbone and panel_size for the SSuper models)."""
  if model not in MODELS:
    raise UserError(f"unknown SSuperGAN model {model!r}; one of {', '.join(MODELS)}")
  if model in ("vae", "intro_vae"):
    settings = _decoder_settings(state_dict, source, model)
    fc = _need(state_dict, "encoder.fc.weight", source, model)
    if fc[0] != 2 * settings["latent_dim"]:
      raise UserError(f"{source}: encoder.fc gives {fc[0]} values, not 2 x the decoder's latent size "
                      f"{settings['latent_dim']}. {_HINT}")
    return settings
  settings = dict(_sequence_settings(state_dict, source, model), backbone=backbone, panel_size=panel_size)
  if model == "plain_ssupervae":
    decoder = _decoder_settings(state_dict, source, model)
    if decoder["latent_dim"] != settings["latent_dim"]:
      raise UserError(f"{source}: the decoder takes {decoder['latent_dim']} latents, the encoder gives "
                      f"{settings['latent_dim']}. {_HINT}")
    return dict(settings, channels=decoder["channels"], image_size=decoder["image_size"])
  g_in = _need(state_dict, "generator.model.0.weight", source, model)
  d_out = _need(state_dict, "local_discriminator.model.0.weight", source, model)
  return dict(settings, ngf=int(g_in[1] // 8), ndf=int(d_out[0]))


# --- conversion ---


def _backbone_variables(state_dict, variant: str, prefix: str, source) -> dict:
  """The EfficientNet's variables from the keys under `prefix` (efficientnet_pytorch's names), checked against
  `variant`'s shapes by its converter."""
  from facegen_jax.convert import efficientnet as convert_efficientnet  # pylint: disable=g-import-not-at-top
  return convert_efficientnet.variables_from_state_dict(state_dict, variant, prefix=prefix, source=source)


def _merge(a: dict, b: dict) -> dict:
  return {c: {**a.get(c, {}), **b.get(c, {})} for c in {*a, *b}}


def without_backbone(variables: dict[str, dict]) -> dict:
  """{collection: {network: tree}} of every variable but the backbone's (whose keys the EfficientNet converter
  maps): what `key_table` names."""
  nested = {}
  for name, tree_by_collection in variables.items():
    for collection, tree in tree_by_collection.items():
      nested.setdefault(collection, {})[name] = {k: v for k, v in tree.items() if k != "backbone"}
  return nested


def variables_from_state_dict(model: str, state_dict, *, backbone: str = "efficientnet-b5", panel_size: int = 300,
                              source="the state_dict") -> Converted:
  """The model's flax variables ({network: {collection: tree}}) from an SSuperGAN state_dict (numpy values)."""
  settings = detect(model, state_dict, source, backbone=backbone, panel_size=panel_size)
  abstract = abstract_variables(model, settings)
  prefix = _BACKBONE_PREFIX.get(model)
  rest = {k: v for k, v in state_dict.items() if not (prefix and k.startswith(prefix))}
  loaded = torch_map.load_variables(rest, without_backbone(abstract), key_table(model), source, _HINT)
  out = {name: {c: loaded.get(c, {}).get(name, {}) for c in abstract[name]} for name in abstract}
  if prefix:
    network = "ssupervae" if model == "plain_ssupervae" else "ssuper_dcgan"
    backbone_vars = _backbone_variables(state_dict, backbone, prefix, source)
    out[network] = _merge(out[network], {c: {"backbone": tree} for c, tree in backbone_vars.items()})
  return Converted(model, settings, out)


# --- files ---


def read_checkpoint(path) -> dict[str, np.ndarray]:
  """The model_state_dict of a trainer checkpoint (or a bare state_dict), DataParallel's prefix dropped."""
  try:
    return torch_map.read_state_dict(path, "trainer's checkpoint (its model_state_dict)")
  except torch_reader.UnsafeCheckpointError as e:
    raise UserError(f"{e}. A torch.save(model) file (the playgrounds' weights/<name>.pth) holds the pickled "
                    f"module, not a state_dict: pass the trainer's ckpts/<name>-checkpoint-epoch<N>.pth") from e


def save(out, converted: Converted) -> None:
  """DIR/variables.npz and DIR/model.json."""
  os.makedirs(out, exist_ok=True)
  arrays = {"/".join((name, c, *p)): np.asarray(leaf) for name, variables in converted.variables.items()
            for c, tree in variables.items() for p, leaf in traverse_util.flatten_dict(tree).items()}
  npz.write(os.path.join(out, VARIABLES_FILE), arrays)
  with open(os.path.join(out, MODEL_FILE), "w") as f:
    json.dump({"model": converted.model, "settings": converted.settings}, f, indent=2)


def load(directory) -> Converted:
  """What `save` wrote: Converted(model, settings, {network: {collection: tree}})."""
  path = os.path.join(directory, MODEL_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{path} not found: convert a checkpoint with `python -m facegen_jax.convert ssupergan`")
  with open(path) as f:
    meta = json.load(f)
  arrays = npz.read(os.path.join(directory, VARIABLES_FILE), "converted SSuperGAN variables")
  flat = {tuple(k.split("/")): v for k, v in arrays.items()}
  return Converted(meta["model"], meta["settings"], traverse_util.unflatten_dict(flat))


# --- the run directory ---

FAMILIES = {"vae": "vae", "intro_vae": "intro_vae", "plain_ssupervae": "ssupervae", "ssuper_dcgan": "ssuper_dcgan"}
_INTRO_GROUPS = ("encoder", "decoder")


def build_config(model: str, settings: dict):
  """configs/<family>.py's real config with the checkpoint's sizes (the LSTM preset for an LSTM SSuperVAE)."""
  import importlib  # pylint: disable=g-import-not-at-top
  family = FAMILIES[model]
  preset = "lstm" if model == "plain_ssupervae" and settings["use_lstm"] else ""
  # Imported here so the other converters do not depend on the configs package.
  config = importlib.import_module(f"configs.{family}").get_config(preset)
  m = config.model
  keys = ("latent_dim", "image_size", "embed_dim", "use_lstm", "lstm_hidden", "bidirectional", "num_layers",
          "backbone", "ngf", "ndf")
  m.update({k: settings[k] for k in keys if k in settings and k in m})
  if "channels" in settings:
    m.channels = tuple(settings["channels"])
  if model in ("vae", "intro_vae"):
    config.input.resolution = settings["image_size"]
  else:
    config.input.panels.num_panels = settings["seq_size"]
    config.input.panels.panel_size = settings["panel_size"]
    config.input.resolution = settings.get("image_size", 64)
  return config


def train_state_parts(model: str, variables: dict[str, dict]) -> tuple[dict, dict]:
  """(params, collections) in the family's layout from `variables_from_state_dict`'s networks."""
  if model == "intro_vae":
    v = variables["vae"]
    return ({g: v["params"][g] for g in _INTRO_GROUPS},
            {g: {"batch_stats": v["batch_stats"][g]} for g in _INTRO_GROUPS})
  if model in ("vae", "plain_ssupervae"):
    v = variables["vae" if model == "vae" else "ssupervae"]
    return {"vae": v["params"]}, {"vae": {"batch_stats": v["batch_stats"]}}
  g, d = variables["ssuper_dcgan"], variables["discriminator"]
  params = {"encoder": {k: g["params"][k] for k in ("backbone", "sequence_encoder")},
            "g": {"generator": g["params"]["generator"]}, "d": d["params"]}
  collections = {"encoder": {"batch_stats": {"backbone": g["batch_stats"]["backbone"]}},
                 "g": {"batch_stats": {"generator": g["batch_stats"]["generator"]}},
                 "d": {"batch_stats": d["batch_stats"]}}
  return params, collections


def write_run_directory(out, converted: Converted):
  """DIR/config.json and a step-0 checkpoint of the family's train state (fresh optimizers); returns the config."""
  config = build_config(converted.model, converted.settings)
  torch_map.save_run(out, config, *train_state_parts(converted.model, converted.variables))
  return config


def convert(model: str, checkpoint, out, *, backbone: str = "efficientnet-b5", panel_size: int = 300) -> Converted:
  """Reads the checkpoint, converts it and writes `out` (the run directory and the variables); returns the
  conversion."""
  state_dict = read_checkpoint(checkpoint)
  converted = variables_from_state_dict(model, state_dict, backbone=backbone, panel_size=panel_size,
                                        source=checkpoint)
  save(out, converted)
  write_run_directory(out, converted)
  return converted
