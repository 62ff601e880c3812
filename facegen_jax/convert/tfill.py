"""TFill checkpoints (lyndonzheng/TFill's <which>_net_{E,T,G}.pth [+ G_Ref, D, D_Ref]) -> a facegen_jax run directory.

  python -m facegen_jax.convert tfill --checkpoint_dir checkpoints/celeba --out runs/tfill_celeba [--which_iter N]
      [--fixed_size 256] [--fine_size 512]
  python -m facegen_jax.inpaint --workdir runs/tfill_celeba --images faces/ --masks masks/ --out out/ [--save_raw]

The directory is what TFill's `BaseModel.save_networks` writes: one plain state_dict per network,
`<which>_net_<name>.pth`, <which> "latest" or the iteration count (--which_iter N, as the original's option; 0 =
latest). It saves `net.module` when on GPUs, so there is no DataParallel prefix, but one is dropped if present.
Read by `torch_reader` (torch is not needed). E, T and G are required; with G_Ref the run is the two-stage
"tfill_refine" family (E, T, G frozen in its "g" group, G_Ref and D_Ref trained), else the coarse "tfill" family
(E, T, G and D). A D the refine family has no place for is left out (said in the summary); a missing D or D_Ref
starts from the family's initialisation.

From the shapes: ngf (E's first conv), embed_dim (E's output, T's tokens), E's downsamplings and residual blocks,
the transformer's layers and FFN width, G's noise injections and attention (--add_noise, --attn_G), G_Ref's
down / middle layers, D's width cap (512 in the original) and ndf. Sizes: the fixed size (the coarse networks')
is D's when it is there, else --fixed_size (default 256); the fine size (the data's, and the size `inpaint` reads
images at) is D_Ref's, else --fine_size (default 512). What no shape tells is the original's default: 8 heads.
Key names and layouts are `facegen_jax.nets.tfill`'s (`torch_key`, `flax_layout_state_dict`); every key of each
file must be used and every variable filled, or a UserError lists the missing and unexpected keys.

Output: DIR/config.json (configs/tfill.py's real config, its `refine` preset for a G_Ref checkpoint, with the
detected config.model and resolution = fine size) and a step-0 checkpoint in the family's layout with fresh
optimizers: `inpaint --workdir DIR` runs it, `main --workdir DIR` fine-tunes it.
"""

from __future__ import annotations

import functools
import importlib
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax.convert import torch_map
from facegen_jax.errors import UserError
from facegen_jax.nets import tfill as nets

REQUIRED = ("E", "T", "G")
OPTIONAL = ("G_Ref", "D", "D_Ref")
KEYS = torch_map.KeyTable(modules=nets.TORCH_MODULES)
_HINT = ("Was it written by TFill's save_networks (checkpoints/<name>/<which>_net_<E|T|G|G_Ref|D|D_Ref>.pth) with "
         "the tc model's options (--netE diff --netT original --netG diff --netD style)?")
# What no config field holds: the value every TFill option set uses, which the families build.
_FIXED = {"kernel_E": 1, "kernel_G": 3, "kernel_T": 1, "down_scale": 4, "num_res_blocks": 2, "attn_E": False,
          "num_heads": 8}


def add_arguments(parser) -> None:
  parser.add_argument("--checkpoint_dir", required=True,
                      help="the directory of TFill's <which>_net_<name>.pth files (checkpoints/<name>)")
  parser.add_argument("--out", required=True, help="the run directory to write (config.json + checkpoint)")
  parser.add_argument("--which_iter", type=int, default=0,
                      help="read <N>_net_<name>.pth, as the original's --which_iter (default 0: latest_net_*)")
  parser.add_argument("--fixed_size", type=int, default=None,
                      help="the coarse networks' size when there is no D to read it from (default 256)")
  parser.add_argument("--fine_size", type=int, default=None,
                      help="the data's size when there is no D_Ref to read it from (default 512)")


def run(args) -> None:
  config, notes = convert(args.checkpoint_dir, args.out, which_iter=args.which_iter, fixed_size=args.fixed_size,
                          fine_size=args.fine_size)
  m = config.model
  print(f"wrote {args.out}: {config.family} (ngf {m.ngf}, embed {m.embed_dim}, {m.n_encoders} transformer layers, "
        f"FFN {m.dim_conv}, noise {m.add_noise}, attn_G {m.attn_G}, fixed {m.fixed_size}, fine {m.fine_size})"
        f"{''.join('; ' + n for n in notes)}; inpaint with `python -m facegen_jax.inpaint --workdir {args.out} "
        "--images IMAGES --masks MASKS --out OUT`")


# --- reading ---


def find_files(checkpoint_dir, which_iter: int = 0) -> dict[str, str]:
  """{network: path} of the networks present for `which_iter` (0 = latest); E, T and G must be there."""
  if not os.path.isdir(checkpoint_dir):
    raise UserError(f"--checkpoint_dir {checkpoint_dir} is not a directory: give TFill's checkpoints/<name>")
  which = str(which_iter) if which_iter > 0 else "latest"
  paths = {name: os.path.join(checkpoint_dir, f"{which}_net_{name}.pth") for name in REQUIRED + OPTIONAL}
  found = {name: path for name, path in paths.items() if os.path.isfile(path)}
  missing = [os.path.basename(paths[name]) for name in REQUIRED if name not in found]
  if missing:
    saved = sorted({m[1] for f in os.listdir(checkpoint_dir) if (m := re.fullmatch(r"(.+)_net_\w+\.pth", f))})
    other = (f"; it holds {', '.join(s + '_net_*' for s in saved)}: pass --which_iter N for N_net_*" if saved
             else "; it holds no *_net_*.pth files")
    raise UserError(f"--checkpoint_dir {checkpoint_dir} has no {', '.join(missing)}{other}")
  return found


def read_networks(paths: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
  """{network: state_dict in flax layout (PixelwiseNorm alphas (C,), blur buffers checked and dropped)}."""
  out = {}
  for name, path in paths.items():
    state_dict = torch_map.read_state_dict(path, f"TFill's {os.path.basename(path)}")
    try:
      out[name] = nets.flax_layout_state_dict(state_dict)
    except ValueError as e:
      raise UserError(f"{path}: {e}. {_HINT}") from e
  return out


# --- detection ---


def _indices(state_dict, pattern: str) -> int:
  """How many distinct values the first group of `pattern` takes over the keys."""
  return len({m[1] for k in state_dict if (m := re.match(pattern, k))})


def _shape(networks, name: str, key: str, paths: dict[str, str]):
  if key not in networks[name]:
    raise UserError(f"{paths[name]}: {name} has no {key}: not a TFill {name}. {_HINT}")
  return networks[name][key].shape


def _discriminator(networks, name: str, paths: dict[str, str]) -> dict:
  """size (from the number of its blocks), max_channels (its 4x4 width) and ndf."""
  shape = functools.partial(_shape, networks, name, paths=paths)
  size = 2 ** (_indices(networks[name], r"convs\.(\d+)\.") + 1)
  max_channels = shape("final_linear.1.weight")[1]
  first = shape("convs.0.0.weight")[0]
  ndf = first * size * 64 // (32 * max_channels) if size > 16 else 32
  if nets.style_channels(size, ndf, max_channels) != first:
    raise UserError(f"{paths[name]}: {name}'s first conv has {first} channels, which fits no ndf at {size} px "
                    f"with width cap {max_channels}. {_HINT}")
  return dict(size=size, max_channels=int(max_channels), ndf=int(ndf))


def detect(networks, paths: dict[str, str], *, fixed_size: int | None = None, fine_size: int | None = None) -> dict:
  """config.model fields (and the _FIXED ones, to check) from the state_dicts' shapes; errors name `paths`."""
  shape = functools.partial(_shape, networks, paths=paths)
  e = networks["E"]
  model = dict(ngf=shape("E", "encode.weight")[0], kernel_E=shape("E", "encode.weight")[2],
               down_scale=_indices(e, r"down\.(\d+)\.downsample\."),
               num_res_blocks=_indices(e, r"down\.0\.block\.(\d+)\."),
               embed_dim=shape("E", "conv_out.conv2.weight")[0], attn_E=any(k.startswith("mid.attn.") for k in e))
  t = networks["T"]
  model.update(n_encoders=_indices(t, r"encoder_trans\.layers\.(\d+)\."),
               dim_conv=shape("T", "encoder_trans.layers.0.conv1.weight")[0],
               kernel_T=shape("T", "encoder_trans.layers.0.conv1.weight")[2])
  g = networks["G"]
  model.update(kernel_G=shape("G", "conv_in.weight")[2], add_noise=any(".noise." in k for k in g),
               attn_G=any(k.startswith("mid.attn.") for k in g))
  if "G_Ref" in networks:
    model.update(down_layers=_indices(networks["G_Ref"], r"down\.(\d+)\.downsample\."),
                 mid_layers=_indices(networks["G_Ref"], r"mid\.(\d+)\."))
  if model["attn_G"] and shape("G", "mid.attn.conv1.weight")[0] != model["dim_conv"]:
    raise UserError(f"{paths['G']}: G's attention FFN is {shape('G', 'mid.attn.conv1.weight')[0]} wide, T's "
                    f"{model['dim_conv']}; TFill builds both 2048 wide. {_HINT}")
  discriminators = {name: _discriminator(networks, name, paths) for name in ("D", "D_Ref") if name in networks}
  for name, d in discriminators.items():
    if "max_channels" in model and (model["max_channels"], model["ndf"]) != (d["max_channels"], d["ndf"]):
      raise UserError(f"{paths[name]}: D and D_Ref differ in width (ndf {model['ndf']} / {d['ndf']}, cap "
                      f"{model['max_channels']} / {d['max_channels']}); TFill builds both from one ndf. {_HINT}")
    model.update(max_channels=d["max_channels"], ndf=d["ndf"])
  model["fixed_size"] = _size("fixed", discriminators.get("D"), fixed_size, 256, paths.get("D"))
  model["fine_size"] = _size("fine", discriminators.get("D_Ref"), fine_size, 512, paths.get("D_Ref"))
  tokens = model["fixed_size"] // 2 ** model["down_scale"]
  if tokens * 2 ** model["down_scale"] != model["fixed_size"] or tokens > 32:
    raise UserError(f"--fixed_size {model['fixed_size']} does not fit E's {model['down_scale']} downsamplings and "
                    f"T's 32x32 position tables: use a multiple of {2 ** model['down_scale']} up to "
                    f"{32 * 2 ** model['down_scale']}")
  return {k: v if isinstance(v, bool) else int(v) for k, v in model.items()}


def _size(what: str, found: dict | None, flag: int | None, default: int, path: str | None) -> int:
  if found is None:
    return default if flag is None else flag
  if flag is not None and flag != found["size"]:
    raise UserError(f"--{what}_size {flag}, but {path} is a discriminator for {found['size']} px: leave the "
                    f"flag out or pass {found['size']}")
  return found["size"]


# --- conversion ---


def networks_for(model: dict) -> dict[str, tuple]:
  """{network: (flax module, example inputs)} at the detected sizes."""
  fixed, fine = model["fixed_size"], model["fine_size"]
  tokens = fixed // 2 ** model["down_scale"]
  image, mask = jnp.zeros((1, fixed, fixed, 3)), jnp.ones((1, fixed, fixed, 1))
  hidden = jnp.zeros((1, tokens, tokens, model["embed_dim"]))
  out = {"E": (nets.DiffEncoder(ngf=model["ngf"], kernel_size=model["kernel_E"], embed_dim=model["embed_dim"],
                                down_scale=model["down_scale"], num_res_blocks=model["num_res_blocks"],
                                use_attn=model["attn_E"]), (image, mask)),
         "T": (nets.Transformer(embed_dim=model["embed_dim"], output_nc=model["embed_dim"],
                                dim_conv=model["dim_conv"], kernel_size=model["kernel_T"],
                                num_heads=model["num_heads"], n_encoders=model["n_encoders"]),
               (hidden, jnp.ones((1, tokens, tokens, 1)))),
         "G": (nets.DiffDecoder(ngf=model["ngf"], kernel_size=model["kernel_G"], up_scale=model["down_scale"],
                                num_res_blocks=model["num_res_blocks"], add_noise=model["add_noise"],
                                use_attn=model["attn_G"], num_heads=model["num_heads"], dim_conv=model["dim_conv"]),
               (hidden, jnp.ones((1, fine, fine, 1)))),
         "D": (nets.StyleDiscriminator(fixed, model.get("ndf", 32), model.get("max_channels", 512)), (image,))}
  if "down_layers" in model:
    out["G_Ref"] = (nets.RefinedGenerator(ngf=model["ngf"], embed_dim=model["embed_dim"],
                                          down_layers=model["down_layers"], mid_layers=model["mid_layers"],
                                          num_res_blocks=model["num_res_blocks"]),
                    (jnp.zeros((1, fine, fine, 3)), jnp.ones((1, fine, fine, 1))))
    out["D_Ref"] = (nets.StyleDiscriminator(fine, model.get("ndf", 32), model.get("max_channels", 512)),
                    (jnp.zeros((1, fine, fine, 3)),))
  return out


def convert_networks(networks, model: dict, paths: dict[str, str]) -> dict[str, dict]:
  """{network: flax params} for each network in the files, checked key by key against the detected sizes."""
  modules = networks_for(model)
  out = {}
  for name, state_dict in networks.items():
    module, inputs = modules[name]
    rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    abstract = jax.eval_shape(functools.partial(module.init, rngs), *inputs)
    out[name] = torch_map.load_variables(state_dict, abstract, KEYS, paths[name], _HINT)["params"]
  return out


def build_config(model: dict):
  """configs/tfill.py's real config ("refine" for a G_Ref checkpoint) with the detected config.model fields.

  A detected value that the config has no field for must be the one the families build (`_FIXED`)."""
  # Imported here so the other converters do not depend on the configs package.
  configs = importlib.import_module("configs.tfill")
  config = configs.get_config("refine" if "down_layers" in model else "")
  for key, value in model.items():
    if key in config.model:
      config.model[key] = value
    elif key in _FIXED and value != _FIXED[key]:
      raise UserError(f"the checkpoint's {key} is {value}; the tfill families build {_FIXED[key]} only")
  config.input.resolution = model["fine_size"]
  if config.init_from.get("required"):  # The refine preset's coarse run: here E, T, G are in the run itself.
    config.init_from.required = False
  from facegen_jax import families  # pylint: disable=g-import-not-at-top
  try:
    families.get_family(config.family).validate(config)
  except UserError as e:
    raise UserError(f"the checkpoint's sizes do not fit the {config.family} family: {e}") from e
  return config


def _fixed_defaults(model: dict) -> dict:
  return {**{k: v for k, v in _FIXED.items() if k not in model}, **model}


def convert(checkpoint_dir, out, *, which_iter: int = 0, fixed_size: int | None = None,
            fine_size: int | None = None):
  """Reads the directory, writes the run directory `out`; returns (its config, notes for the summary)."""
  paths = find_files(checkpoint_dir, which_iter)
  networks = read_networks(paths)
  model = _fixed_defaults(detect(networks, paths, fixed_size=fixed_size, fine_size=fine_size))
  params = convert_networks(networks, model, paths)
  config = build_config(model)
  notes = []
  refine = config.family == "tfill_refine"
  layout = {"E": ("g", "E"), "T": ("g", "T"), "G": ("g", "G")}
  layout.update({"G_Ref": ("g_ref", None), "D_Ref": ("d_ref", None)} if refine else {"D": ("d", None)})
  for name in OPTIONAL:
    if name in params and name not in layout:
      notes.append(f"{name} left out (the {config.family} family has no {name})")
      del params[name]
    elif name in layout and name not in params:
      notes.append(f"no {name}: the family's initialisation")
  write_run_directory(out, config, {layout[n]: p for n, p in params.items()})
  return config, notes


def write_run_directory(out, config, networks: dict[tuple[str, str | None], dict]) -> None:
  """DIR/config.json and a step-0 checkpoint: the family's fresh state with `networks` ({(group, name or None for
  the whole group): params}) in place of its initial parameters (a group named in parts must get every part)."""
  params = {}
  for (group, name), value in networks.items():
    if name is None:
      params[group] = value
    else:
      params.setdefault(group, {})[name] = value
  torch_map.save_run(out, config, params)
