"""U-GAT-IT / Face2webtoon checkpoint (the six networks of `UGATIT.save`) -> a facegen_jax run directory.

  python -m facegen_jax.convert ugatit --checkpoint results/selfie2anime_params_latest.pt --out runs/s2a
  python -m facegen_jax.translate --workdir runs/s2a --images faces/ --direction a2b --out out/

The file is what znxlwm/UGATIT-pytorch's and sangyun884/Face2Webtoon's `save` write: torch.save of
{genA2B, genB2A, disGA, disGB, disLA, disLB: state_dict}, read by `torch_reader` (torch is not needed).
From the shapes: ngf (the first conv's width), n_res (the encoder's residual blocks), light or full (the first
FC's input: 4 ngf for light, (img/4)^2 * 4 ngf for full), each discriminator pair's n_layers (its convs),
Face2webtoon's group heads (`group_classfier`, on all four Ds or none) and their number of groups. The image size
is the flag's (default 256): a full generator's FC fixes it, so a mismatch is an error naming the size to pass.

Keys map by `GENERATOR_KEYS` and `DISCRIMINATOR_KEYS` (layouts, spectral-norm `weight_orig`/`weight_u`/
`weight_v` and the strict check are `torch_map`'s); (Ada)ILN's rho, gamma and beta, (1, C, 1, 1) in torch, become
(C,). Every key of every network must be used and every variable filled, or a UserError names the keys.
The output is a U-GAT-IT run directory: the six networks in the family's train state (params {"g": {"a2b",
"b2a"}, "d": {"ga", "gb", "la", "lb"}}, the Ds' u and v in collections["d"]["spectral_stats"]) with fresh
optimizers, and the config of configs/ugatit.py's preset for the checkpoint ("" or "light"; "face2webtoon" or
"face2webtoon_light" when it has group heads) with the detected config.model and --img_size as the resolution.
`translate` runs it, and `main --config configs/ugatit.py:<preset> --workdir DIR` continues training it (with
its config.model as in DIR/config.json).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax.convert import torch_map
from facegen_jax.convert import torch_reader
from facegen_jax.errors import UserError
from facegen_jax.nets import spectral_norm as sn_lib
from facegen_jax.nets import ugatit as nets

# The file's networks -> (parameter group, name) in the train state.
NETWORKS = {"genA2B": ("g", "a2b"), "genB2A": ("g", "b2a"), "disGA": ("d", "ga"), "disGB": ("d", "gb"),
            "disLA": ("d", "la"), "disLB": ("d", "lb")}
_HINT = ("Was it written by UGATIT-pytorch's or Face2Webtoon's UGATIT.save (results/<dataset>/model/"
         "<dataset>_params_<step>.pt)?")
_ILN_LEAVES = ("rho", "gamma", "beta")

# torch's nn.Sequential indices of the generator's layers (networks.py: pad, conv, norm, relu per layer).
_G_MODULES = {"conv_in": "DownBlock.1", "down_0": "DownBlock.5", "down_1": "DownBlock.9",
              "FC_0": "FC.0", "FC_1": "FC.2", "up_0": "UpBlock2.2", "up_norm_0": "UpBlock2.3",
              "up_1": "UpBlock2.7", "up_norm_1": "UpBlock2.8", "conv_out": "UpBlock2.11"}
_BLOCK_LAYERS = {"conv_0": "conv_block.1", "conv_1": "conv_block.5"}
_ADA_BLOCK_LAYERS = {"conv_0": "conv1", "norm_0": "norm1", "conv_1": "conv2", "norm_1": "norm2"}
_ENCODER_BLOCKS = 12  # DownBlock's first ResnetBlock.


def _generator_module(path: tuple[str, ...]) -> str:
  head, *rest = path
  if m := re.fullmatch(r"ResnetBlock_(\d+)", head):
    return f"DownBlock.{_ENCODER_BLOCKS + int(m[1])}." + ".".join(_BLOCK_LAYERS[p] for p in rest)
  if m := re.fullmatch(r"ResnetAdaILNBlock_(\d+)", head):
    return f"UpBlock1_{int(m[1]) + 1}." + ".".join(_ADA_BLOCK_LAYERS[p] for p in rest)
  return ".".join([_G_MODULES.get(head, head), *rest])


def _discriminator_module(path: tuple[str, ...]) -> str:
  [name] = path
  if m := re.fullmatch(r"conv_(\d+)", name):
    return f"model.{3 * int(m[1]) + 1}"
  return {"conv_out": "conv", "group_classifier": "group_classfier"}.get(name, name)  # The original's spelling.


GENERATOR_KEYS = torch_map.KeyTable(module_name=_generator_module)
DISCRIMINATOR_KEYS = torch_map.KeyTable(module_name=_discriminator_module)


def add_arguments(parser) -> None:
  parser.add_argument("--checkpoint", required=True,
                      help="the file UGATIT.save wrote, e.g. results/<dataset>/model/<dataset>_params_0100000.pt")
  parser.add_argument("--out", required=True, help="the run directory to write (config.json + checkpoint)")
  parser.add_argument("--img_size", type=int, default=256, help="the original's --img_size (default 256)")


def run(args) -> None:
  config = convert(args.checkpoint, args.out, img_size=args.img_size)
  m = config.model
  groups = f", {m.num_groups} groups" if m.num_groups else ""
  print(f"wrote {args.out}: U-GAT-IT {'light' if m.light else 'full'} (ngf {m.ngf}, n_res {m.n_res}, img "
        f"{config.input.resolution}, D n_layers {m.n_layers_global}/{m.n_layers_local}{groups}); translate with "
        f"`python -m facegen_jax.translate --workdir {args.out} --images IMAGES --direction a2b --out OUT`")


# --- reading and detection ---


def read_networks(path) -> dict[str, dict[str, np.ndarray]]:
  """{network name: state_dict} of the six networks, or a UserError saying what the file holds instead."""
  networks = {}
  for key, value in torch_reader.load_state_dict(path).items():
    name, _, rest = key.partition(".")
    networks.setdefault(name, {})[rest] = _iln_vector(rest, value)
  if set(networks) != set(NETWORKS):
    found = sorted(networks)
    if set(found) & {"DownBlock", "UpBlock2", "model", "gap_fc"}:
      seems = "one network's state_dict (UGATIT.save writes all six in one dict)"
    else:
      seems = f"{', '.join(found[:6])}{', ...' if len(found) > 6 else ''}"
    raise UserError(f"{path} is not a U-GAT-IT checkpoint (a dict of {', '.join(NETWORKS)}); it holds {seems}. "
                    f"{_HINT}")
  return networks


def _iln_vector(key: str, value: np.ndarray) -> np.ndarray:
  """(Ada)ILN's (1, C, 1, 1) parameters as the (C,) vectors our modules keep."""
  if key.rsplit(".", 1)[-1] in _ILN_LEAVES and value.ndim == 4 and value.shape[::2] == (1, 1):
    return value.reshape(-1)
  return value


def _shape(state_dict, key, network, source):
  if key not in state_dict:
    raise UserError(f"{source}: {network} has no {key}: not a U-GAT-IT network. {_HINT}")
  return state_dict[key].shape


def detect_generator(state_dict, network: str, source, *, img_size: int) -> dict:
  """ngf, n_res and light of one generator; a full one's FC must fit img_size."""
  ngf = _shape(state_dict, "DownBlock.1.weight", network, source)[0]
  fc_in = _shape(state_dict, "FC.0.weight", network, source)[1]
  n_res = len({k.split(".")[1] for k in state_dict if re.match(r"DownBlock\.\d+\.conv_block\.", k)})
  light = fc_in == 4 * ngf
  if not light and fc_in != (img_size // 4) ** 2 * 4 * ngf:
    size = np.sqrt(fc_in / (4 * ngf)) * 4
    fix = f"pass --img_size {int(size)}" if size == int(size) else "its size fits no square image"
    raise UserError(f"{source}: {network} is a full generator whose FC.0 takes {fc_in} features, "
                    f"not the {(img_size // 4) ** 2 * 4 * ngf} of --img_size {img_size}: {fix}")
  return dict(ngf=int(ngf), n_res=n_res, light=bool(light))


def detect_discriminator(state_dict, network: str, source) -> dict:
  """n_layers (its reflect-padded convs before the CAM) and the group head's size (0 without one)."""
  _shape(state_dict, "conv1x1.weight", network, source)
  convs = {int(m[1]) for k in state_dict if (m := re.fullmatch(r"model\.(\d+)\.weight_orig", k))}
  head = state_dict.get("group_classfier.weight_orig")
  return dict(n_layers=len(convs) + 1, num_groups=0 if head is None else int(head.shape[0]))


def detect(networks, source, *, img_size: int = 256) -> dict:
  """config.model fields, the same for both generators and for each pair of discriminators."""
  g = [detect_generator(networks[n], n, source, img_size=img_size) for n in ("genA2B", "genB2A")]
  d = {n: detect_discriminator(networks[n], n, source) for n in ("disGA", "disGB", "disLA", "disLB")}
  if g[0] != g[1]:
    raise UserError(f"{source}: genA2B ({g[0]}) and genB2A ({g[1]}) differ; U-GAT-IT builds them alike. {_HINT}")
  for a, b in (("disGA", "disGB"), ("disLA", "disLB")):
    if d[a]["n_layers"] != d[b]["n_layers"]:
      raise UserError(f"{source}: {a} has n_layers {d[a]['n_layers']}, {b} {d[b]['n_layers']}. {_HINT}")
  groups = {v["num_groups"] for v in d.values()}
  if len(groups) != 1:
    sizes = ", ".join(f"{n}: {v['num_groups']}" for n, v in d.items())
    raise UserError(f"{source}: some discriminators have a group classifier and some not (groups {sizes}). "
                    f"{_HINT}")
  return dict(g[0], img_size=img_size, n_layers_global=d["disGA"]["n_layers"],
              n_layers_local=d["disLA"]["n_layers"], num_groups=groups.pop())


# --- conversion ---


def networks_for(model: dict) -> tuple[dict, jax.Array]:
  """({file network name: flax module}, an example input) for config.model fields."""
  image = jnp.zeros((1, model["img_size"], model["img_size"], 3))
  generator = nets.ResnetGenerator(ngf=model["ngf"], n_blocks=model["n_res"], img_size=model["img_size"],
                                   light=model["light"])
  local = nets.Discriminator(ndf=model["ngf"], n_layers=model["n_layers_local"], num_groups=model["num_groups"])
  global_ = nets.Discriminator(ndf=model["ngf"], n_layers=model["n_layers_global"], num_groups=model["num_groups"])
  return {"genA2B": generator, "genB2A": generator, "disGA": global_, "disGB": global_, "disLA": local,
          "disLB": local}, image


def convert_networks(networks, model: dict, source) -> dict[str, dict]:
  """{file network name: flax variables {collection: tree}}, each checked key by key."""
  modules, image = networks_for(model)
  abstract, out = {}, {}
  for name, module in modules.items():
    is_generator = name.startswith("gen")
    if module not in abstract:  # Each pair of networks shares one module.
      kwargs = {} if is_generator else {"update_stats": False}
      abstract[module] = jax.eval_shape(functools.partial(module.init, jax.random.key(0), image, **kwargs))
    table = GENERATOR_KEYS if is_generator else DISCRIMINATOR_KEYS
    out[name] = torch_map.load_variables(networks[name], abstract[module], table, f"{source} ({name})", _HINT)
  return out


def build_config(model: dict):
  """configs/ugatit.py's preset for the checkpoint (light or not, Face2webtoon's if it has group heads), its
  config.model fields from the checkpoint and its resolution from --img_size."""
  # Imported here so the other converters do not depend on the configs package.
  from configs import ugatit as ugatit_configs  # pylint: disable=g-import-not-at-top
  preset = "face2webtoon" if model["num_groups"] else ""
  if model["light"]:
    preset = f"{preset}_light" if preset else "light"
  config = ugatit_configs.get_config(preset)
  config.model.update({key: value for key, value in model.items() if key in config.model})
  config.input.resolution = model["img_size"]
  if config.input.get("load_size"):  # U-GAT-IT's train transform: resize to size + 30, random crop.
    config.input.load_size = model["img_size"] + 30
  return config


def train_state_parts(variables: dict[str, dict]) -> tuple[dict, dict]:
  """(params, collections) in the U-GAT-IT family's layout from `convert_networks`' result."""
  params, spectral = {"g": {}, "d": {}}, {}
  for name, (group, key) in NETWORKS.items():
    params[group][key] = variables[name]["params"]
    if group == "d":
      spectral[key] = variables[name][sn_lib.SPECTRAL_STATS]
  return params, {"g": {}, "d": {sn_lib.SPECTRAL_STATS: spectral}}


def convert(checkpoint, out, *, img_size: int = 256):
  """Writes the run directory `out`; returns its config."""
  networks = read_networks(checkpoint)
  model = detect(networks, checkpoint, img_size=img_size)
  params, collections = train_state_parts(convert_networks(networks, model, checkpoint))
  config = build_config(model)

  torch_map.save_run(out, config, params, collections)
  return config
