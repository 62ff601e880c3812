"""NVlabs/MUNIT generator checkpoint (gen_XXXXXXXX.pt: {'a': gen_a, 'b': gen_b}) -> facegen_jax variables.

  python -m facegen_jax.convert munit --checkpoint outputs/e2h/checkpoints/gen_01000000.pt --out runs/e2h \\
      [--config configs/edges2handbags_folder.yaml] [--dis outputs/e2h/checkpoints/dis_01000000.pt]

The files are what MUNIT_Trainer.save (and SATNet's Trainer.save, `convert satnet`) writes: torch.save of
{'a': gen_a.state_dict(), 'b': gen_b.state_dict()} and, for --dis, the same of the discriminators; they are read
by `torch_reader` (torch is not needed). From the shapes: dim, style_dim, mlp_dim, n_downsample, n_res, the input
channels of each domain and SATNet's self-attention; for the discriminators dim, n_layer, num_scales, norm ('sn'
when the convs have `weight_bar`) and attention. What no shape tells comes from the trainer's yaml (--config,
read with PyYAML): gen.activ, gen.pad_type, dis.activ, dis.pad_type (without it relu / lrelu and reflect, the
value in every MUNIT and SATNet config); the yaml's sizes must agree with the shapes. A D trained with dis.norm
'in' has the keys of 'none': pass its yaml, which names the norm, to get an error instead of a wrong model.

Keys: flax module paths map to torch's nn.Sequential indices (`generator_module_name`,
`discriminator_module_name`); layouts and the strict check are `torch_map`'s. The originals' SpectralNorm keeps
`<conv>.module.weight_bar`, `weight_u`, `weight_v` and `bias` (`nets/spectral_norm.py`'s `MunitSNConv`: kernel,
u, v, bias). The AdaIN layers' `running_mean` / `running_var` are MUNIT's dummy buffers (never read): they must
be present with their shapes and are dropped. Every other key must be used and every variable filled.

The result (`convert`) is each network's variables ({"params": ..., "spectral_stats": ...} when it has spectral
norm); `write_run_directory` puts them in the MUNIT family's state (facegen_jax/families/munit.py), params
{"g": {"a", "b"}, "d": {"a", "b"}} and collections {"g": {"spectral_stats": {"a", "b"}}, "d": {...}}, with fresh
optimizers (and a fresh D without --dis), and writes it with configs/munit.py's (configs/satnet.py's) config
carrying the detected sizes, at --resolution (default the config's: 256; SATNet 224x192). The identity loss is
off in that config (the file has no sphere20a): to train on with it, start a run from the directory with
--config.init_from.workdir=OUT --config.identity.weights=sphere20a.npz.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from facegen_jax.convert import torch_map
from facegen_jax.convert import torch_reader
from facegen_jax.errors import UserError
from facegen_jax.nets import munit as nets
from facegen_jax.nets import spectral_norm as sn_lib

DOMAINS = ("a", "b")
VARIANTS = ("munit", "satnet")
_HINT = ("Was it written by MUNIT's or SATNet's trainer (outputs/<name>/checkpoints/gen_XXXXXXXX.pt, "
         "dis_XXXXXXXX.pt)?")
# Collection of the expected keys that are read and checked but not kept (AdaIN's dummy buffers).
_DROPPED = "_dropped"
# The settings no shape tells, and their value in every MUNIT and SATNet config.
GEN_DEFAULTS = {"activ": "relu", "pad_type": "reflect"}
DIS_DEFAULTS = {"activ": "lrelu", "pad_type": "reflect"}
GEN_SIZES = ("dim", "style_dim", "mlp_dim", "n_downsample", "n_res")
DIS_SIZES = ("dim", "n_layer", "num_scales", "norm")


class Converted(NamedTuple):
  """`convert`'s result: the model's settings and each network's flax variables, by domain."""
  model: dict  # {"gen": AdaINGen fields, "dis": MsImageDis fields or None, "input_dim_a", "input_dim_b"}
  generators: dict  # {"a": {"params": ..., ["spectral_stats": ...]}, "b": ...}
  discriminators: dict | None  # the same for --dis, else None


def add_arguments(parser) -> None:
  parser.add_argument("--checkpoint", required=True, help="the generators' file, e.g. checkpoints/gen_01000000.pt")
  parser.add_argument("--out", required=True, help="the run directory to write")
  parser.add_argument("--config", help="the trainer's yaml (activations and padding; its sizes are checked)")
  parser.add_argument("--dis", help="the discriminators' file, e.g. checkpoints/dis_01000000.pt (default: a fresh "
                                    "D when training continues)")
  parser.add_argument("--resolution", help="the image size of the run directory (what translate resizes inputs "
                                           "to), H or H,W (default: the config's, 256; SATNet 224,192)")


def run(args, variant: str = "munit") -> None:
  resolution = parse_resolution(args.resolution) if args.resolution else None
  converted = convert(args.checkpoint, variant=variant, config=args.config, dis=args.dis)
  config = write_run_directory(args.out, converted, variant=variant, resolution=resolution)
  print(f"wrote {args.out}: {describe(converted, variant)} at {config.input.resolution}; translate with "
        f"`python -m facegen_jax.translate --workdir {args.out} --images IN --direction a2b --out OUT`")


def parse_resolution(text: str) -> int | tuple[int, int]:
  try:
    sizes = tuple(int(v) for v in text.split(","))
  except ValueError:
    sizes = ()
  if len(sizes) not in (1, 2) or min(sizes) < 1:
    raise UserError(f"--resolution {text!r}: give H or H,W in pixels, e.g. 256 or 224,192")
  return sizes[0] if len(sizes) == 1 else sizes


def describe(converted: Converted, variant: str) -> str:
  gen, dis = converted.model["gen"], converted.model["dis"]
  text = (f"{variant.upper() if variant == 'munit' else 'SATNet'} generators (dim {gen['dim']}, style_dim "
          f"{gen['style_dim']}, mlp_dim {gen['mlp_dim']}, n_downsample {gen['n_downsample']}, n_res {gen['n_res']}"
          f"{', attention' if gen['attention'] else ''})")
  if dis:
    text += (f" and discriminators (dim {dis['dim']}, n_layer {dis['n_layer']}, {dis['num_scales']} scales, norm "
             f"{dis['norm']}{', attention' if dis['attention'] else ''})")
  return text


def build_config(model: dict, *, variant: str, resolution=None):
  """configs/<variant>.py's default config with the checkpoint's sizes (the identity loss off)."""
  # Imported here so the other converters do not depend on the configs package.
  from configs import munit as munit_configs  # pylint: disable=g-import-not-at-top
  from configs import satnet as satnet_configs  # pylint: disable=g-import-not-at-top
  from facegen_jax.families import munit as family  # pylint: disable=g-import-not-at-top
  for d in DOMAINS:
    if model[f"input_dim_{d}"] != 3:
      raise UserError(f"gen_{d} takes {model[f'input_dim_{d}']} channels: the MUNIT family here translates RGB "
                      "images (input_dim 3)")
  config = (satnet_configs if variant == "satnet" else munit_configs).get_config()
  gen, dis = model["gen"], model["dis"]
  config.model.attention = gen["attention"]
  config.model.gen.update({k: gen[k] for k in config.model.gen})
  if dis:
    if dis["attention"] != gen["attention"]:
      raise UserError(f"the discriminators {'have' if dis['attention'] else 'lack'} self-attention and the "
                      f"generators {'do' if gen['attention'] else 'do not'}: not one trainer's networks")
    config.model.dis.update({k: dis[k] for k in config.model.dis if k in dis})
  config.loss_weights.identity = 0.0
  if resolution:
    config.input.resolution = resolution
    config.input.load_size = None
    config.input.random_crop = False
  family.validate(config)
  return config


def _spectral(variables: dict) -> dict:
  if sn_lib.SPECTRAL_STATS not in variables["a"]:
    return {}
  return {sn_lib.SPECTRAL_STATS: {d: variables[d][sn_lib.SPECTRAL_STATS] for d in DOMAINS}}


def write_run_directory(out, converted: Converted, *, variant: str, resolution=None):
  """Writes the run directory `out` (config.json + a step-0 checkpoint); returns its config."""
  config = build_config(converted.model, variant=variant, resolution=resolution)
  params = {"g": {d: converted.generators[d]["params"] for d in DOMAINS}}
  collections = {"g": _spectral(converted.generators)}
  if converted.discriminators:  # Without --dis: the family's fresh D.
    params["d"] = {d: converted.discriminators[d]["params"] for d in DOMAINS}
    collections["d"] = _spectral(converted.discriminators)
  torch_map.save_run(out, config, params, collections)
  return config


# --- reading ---


def read_pair(path, what: str) -> dict[str, dict[str, np.ndarray]]:
  """{"a": state_dict, "b": state_dict} of a trainer's gen_/dis_ file, or a UserError saying what it holds."""
  pair = {}
  for key, value in torch_reader.load_state_dict(path).items():
    name, _, rest = key.partition(".")
    pair.setdefault(name, {})[rest] = value
  if set(pair) != set(DOMAINS):
    found = sorted(pair)
    if set(found) & {"enc_style", "enc_content", "dec", "mlp", "cnns"}:
      seems = "one network's state_dict (the trainer saves {'a': ..., 'b': ...})"
    elif set(found) == {"gen", "dis"}:
      seems = "the optimizers (optimizer.pt)"
    else:
      seems = f"{', '.join(found[:6])}{', ...' if len(found) > 6 else ''}"
    raise UserError(f"{path} is not a MUNIT {what} checkpoint (a dict of 'a' and 'b'); it holds {seems}. {_HINT}")
  return pair


def _shape(state_dict, key, network, source) -> tuple[int, ...]:
  if key not in state_dict:
    raise UserError(f"{source}: {network} has no {key}: not a MUNIT {_kind(network)}. {_HINT}")
  return tuple(state_dict[key].shape)


def _kind(network: str) -> str:
  return "discriminator" if network.startswith("dis") else "generator"


def _indices(state_dict, pattern: str) -> set[int]:
  return {int(m[1]) for k in state_dict if (m := re.match(pattern, k))}


def detect_generator(state_dict, network: str, source) -> dict:
  """AdaINGen's sizes, input channels and attention from one generator's keys and shapes."""
  if any(k.startswith("cnns.") for k in state_dict):
    raise UserError(f"{source}: {network} is a discriminator (dis_XXXXXXXX.pt): pass it with --dis and the "
                    f"generators (gen_XXXXXXXX.pt) with --checkpoint")
  dim, input_dim = _shape(state_dict, "enc_content.model.0.conv.weight", network, source)[:2]
  n_downsample = 0
  while f"enc_content.model.{n_downsample + 1}.conv.weight" in state_dict:
    n_downsample += 1
  res = n_downsample + 1
  n_res = len(_indices(state_dict, rf"enc_content\.model\.{res}\.model\.(\d+)\."))
  style = f"enc_style.model.{nets.STYLE_DOWNSAMPLES + 2}.weight"
  return dict(dim=dim, style_dim=_shape(state_dict, style, network, source)[0],
              mlp_dim=_shape(state_dict, "mlp.model.0.fc.weight", network, source)[0], n_downsample=n_downsample,
              n_res=n_res, attention=f"enc_content.model.{res + 1}.gamma" in state_dict, input_dim=input_dim)


def detect_discriminator(state_dict, network: str, source) -> dict:
  """MsImageDis's sizes, norm and attention from one discriminator's keys and shapes."""
  if any(k.startswith("enc_content.") for k in state_dict):
    raise UserError(f"{source}: {network} is a generator: pass the discriminators' file (dis_XXXXXXXX.pt) "
                    f"with --dis")
  dim, input_dim = _shape(state_dict, "cnns.0.0.conv.weight", network, source)[:2]
  n_layer = len(_indices(state_dict, r"cnns\.0\.(\d+)\.conv\."))
  return dict(dim=dim, n_layer=n_layer, num_scales=len(_indices(state_dict, r"cnns\.(\d+)\.")),
              norm="sn" if "cnns.0.1.conv.module.weight_bar" in state_dict else "none",
              attention=f"cnns.0.{n_layer}.gamma" in state_dict, input_dim=input_dim)


def _same_for_both(detected: dict, what: str, source) -> dict:
  a, b = ({k: v for k, v in detected[d].items() if k != "input_dim"} for d in DOMAINS)
  if a != b:
    raise UserError(f"{source}: the {what}s of a ({a}) and b ({b}) differ; the trainer builds them alike. {_HINT}")
  return a


def read_yaml(path) -> dict:
  """The trainer's yaml as a dict (PyYAML)."""
  try:
    import yaml  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f"--config {path} needs PyYAML to read it: `pip install pyyaml`, or leave --config out "
                    f"(sizes come from the checkpoint, activations default to {GEN_DEFAULTS['activ']} / "
                    f"{DIS_DEFAULTS['activ']}, padding to reflect)") from None
  try:
    with open(path) as f:
      config = yaml.safe_load(f)
  except OSError as e:
    raise UserError(f"--config {path}: {e.strerror}") from None
  except yaml.YAMLError as e:
    raise UserError(f"--config {path} is not valid YAML: {' '.join(str(e).split())}") from None
  if not isinstance(config, dict) or not isinstance(config.get("gen"), dict):
    raise UserError(f"--config {path} has no gen: section: pass the trainer's config (configs/*.yaml)")
  return config


def _settings(detected: dict, section: dict | None, sizes, defaults: dict, what: str, source, config_path) -> dict:
  """detected sizes + the yaml's (or default) activation and padding; a yaml size that differs is an error."""
  section = section or {}
  for key in sizes:
    if key in section and section[key] != detected[key]:
      raise UserError(f"--config {config_path} says {what}.{key} {section[key]!r}, but {source}'s shapes say "
                      f"{detected[key]!r}: pass the config the checkpoint was trained with")
  out = dict(detected, **{k: section.get(k, v) for k, v in defaults.items()})
  if out["activ"] not in nets.ACTIVATIONS:
    raise UserError(f"--config {config_path}: {what}.activ {out['activ']!r} is not supported "
                    f"(supported: {', '.join(nets.ACTIVATIONS)})")
  if out["pad_type"] not in nets.PAD_MODES:
    raise UserError(f"--config {config_path}: {what}.pad_type {out['pad_type']!r} is not one of "
                    f"{', '.join(nets.PAD_MODES)}")
  return out


def detect(generators, discriminators, source, *, variant: str, config_path=None, dis_source=None) -> dict:
  """The model's settings: {"gen": ..., "dis": ... or None, "input_dim_a", "input_dim_b"}."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  config = read_yaml(config_path) if config_path else {}
  g = {d: detect_generator(generators[d], f"gen_{d}", source) for d in DOMAINS}
  model = {"gen": _settings(_same_for_both(g, "generator", source), config.get("gen"), GEN_SIZES, GEN_DEFAULTS,
                            "gen", source, config_path), "dis": None}
  for d in DOMAINS:
    want = config.get(f"input_dim_{d}", g[d]["input_dim"])
    if want != g[d]["input_dim"]:
      raise UserError(f"--config {config_path} says input_dim_{d} {want}, but gen_{d} takes {g[d]['input_dim']} "
                      f"channels: pass the config the checkpoint was trained with")
    model[f"input_dim_{d}"] = g[d]["input_dim"]
  if variant == "munit" and model["gen"]["attention"]:
    raise UserError(f"{source} has SATNet's self-attention (enc_content.model.{model['gen']['n_downsample'] + 2}"
                    f".gamma): convert it with `python -m facegen_jax.convert satnet`")
  if discriminators is not None:
    dis_config = config.get("dis") or {}
    if dis_config.get("norm", "none") not in ("none", "sn"):
      raise UserError(f"--config {config_path}: dis.norm {dis_config['norm']!r} is not supported (MsImageDis here "
                      f"has norm none or sn)")
    d = {dom: detect_discriminator(discriminators[dom], f"dis_{dom}", dis_source) for dom in DOMAINS}
    for dom in DOMAINS:
      if d[dom]["input_dim"] != model[f"input_dim_{dom}"]:
        raise UserError(f"{dis_source}: dis_{dom} takes {d[dom]['input_dim']} channels, gen_{dom} "
                        f"{model[f'input_dim_{dom}']}: not the discriminators of {source}")
    model["dis"] = _settings(_same_for_both(d, "discriminator", dis_source), dis_config, DIS_SIZES, DIS_DEFAULTS,
                             "dis", dis_source, config_path)
  return model


# --- key tables ---


def generator_module_name(path: tuple[str, ...], *, n_downsample: int, attention: bool, spectral) -> str:
  """The torch module path of a flax module path of `nets.munit.AdaINGen` (see networks.py's Sequentials)."""
  head, *rest = path
  parts = [head]
  if head == "mlp":
    parts.append(f"model.{int(rest.pop(0).split('_')[1])}.fc")
  else:
    first = rest.pop(0)
    kind, _, index = first.rpartition("_")
    up_base = 1 + (2 if attention else 0)  # dec: ResBlocks, [SelfAttention, ResBlock], (Upsample, conv) x n, conv
    if first == "conv_in":
      parts.append("model.0")
    elif kind == "down":
      parts.append(f"model.{int(index) + 1}")
    elif first == "conv_out":
      last = nets.STYLE_DOWNSAMPLES + 2 if head == "enc_style" else up_base + 2 * n_downsample
      parts.append(f"model.{last}")
    elif kind == "res":
      parts.append(f"model.{n_downsample + 1 if head == 'enc_content' else 0}.model.{index}")
    elif first == "attention":
      parts.append(f"model.{n_downsample + 2 if head == 'enc_content' else 1}")
    elif first == "post_attention_res":
      parts.append(f"model.{n_downsample + 3 if head == 'enc_content' else 2}")
    elif kind == "up":
      parts.append(f"model.{up_base + 2 * int(index) + 1}")
    else:
      raise ValueError(f"no torch name for {'/'.join(path)}")
  for name in rest:
    if m := re.fullmatch(r"block_(\d+)", name):
      parts.append(f"model.{m[1]}")
    else:
      parts.append(name)
  return _spectral_suffix(".".join(parts), path, spectral)


def discriminator_module_name(path: tuple[str, ...], *, n_layer: int, attention: bool, spectral) -> str:
  """The torch module path of a flax module path of `nets.munit.MsImageDis` (cnns.<scale>.<layer>)."""
  scale, layer, *rest = path
  if m := re.fullmatch(r"conv_(\d+)", layer):
    index = int(m[1])
  else:
    index = {"attention": n_layer, "conv_out": n_layer + (1 if attention else 0)}[layer]
  return _spectral_suffix(".".join([f"cnns.{scale.split('_')[1]}", str(index), *rest]), path, spectral)


def _spectral_suffix(name: str, path, spectral) -> str:
  """The SpectralNorm wrapper holds its conv as `.module`."""
  return f"{name}.module" if tuple(path) in spectral else name


def expected_keys(abstract: dict, module_name) -> dict[str, torch_map.Entry]:
  """torch_map's expected keys with the originals' spectral-norm names (weight_bar, not weight_orig)."""
  spectral = {path[:-1] for path, _ in _flat(abstract.get(sn_lib.SPECTRAL_STATS, {}))}
  table = torch_map.KeyTable(module_name=functools.partial(module_name, spectral=spectral))
  return {re.sub(r"\.weight_orig$", ".weight_bar", key): entry
          for key, entry in torch_map.expected_keys(abstract, table).items()}


def _flat(tree):
  return [(tuple(k.key for k in path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def _adain_buffers(gen: dict) -> dict[str, torch_map.Entry]:
  """MUNIT's dummy AdaIN running_mean / running_var: checked, then dropped."""
  channels = gen["dim"] * 2 ** gen["n_downsample"]
  blocks = [f"dec.model.0.model.{i}" for i in range(gen["n_res"])] + (["dec.model.2"] if gen["attention"] else [])
  return {f"{block}.model.{j}.norm.{buffer}": torch_map.Entry(_DROPPED, (f"{block}.{j}.{buffer}",), (channels,),
                                                              torch_map.AS_IS)
          for block in blocks for j in range(2) for buffer in ("running_mean", "running_var")}


# --- conversion ---


def generators_for(model: dict) -> dict[str, nets.AdaINGen]:
  return {d: nets.AdaINGen(**model["gen"], input_dim=model[f"input_dim_{d}"]) for d in DOMAINS}


def discriminators_for(model: dict) -> dict[str, nets.MsImageDis]:
  return {d: nets.MsImageDis(**model["dis"]) for d in DOMAINS}


def _example(model: dict, domain: str) -> jax.ShapeDtypeStruct:
  """An input large enough for every layer (D's last scale must keep 2 px for its reflect padding)."""
  dis = model["dis"] or {"n_layer": 0, "num_scales": 1}
  size = max(2 ** (model["gen"]["n_downsample"] + 2), 2 ** (dis["n_layer"] + dis["num_scales"]), 64)
  return jax.ShapeDtypeStruct((1, size, size, model[f"input_dim_{domain}"]), jnp.float32)


def generator_keys(model: dict, domain: str) -> tuple[dict, dict[str, torch_map.Entry]]:
  """(abstract variables, {torch key: Entry}) of one AdaINGen, AdaIN's dummy buffers included."""
  gen = model["gen"]
  name = functools.partial(generator_module_name, n_downsample=gen["n_downsample"], attention=gen["attention"])
  return _keys(generators_for(model)[domain], name, _example(model, domain), _adain_buffers(gen))


def discriminator_keys(model: dict, domain: str) -> tuple[dict, dict[str, torch_map.Entry]]:
  """(abstract variables, {torch key: Entry}) of one MsImageDis."""
  dis = model["dis"]
  name = functools.partial(discriminator_module_name, n_layer=dis["n_layer"], attention=dis["attention"])
  return _keys(discriminators_for(model)[domain], name, _example(model, domain), {})


def _keys(module, module_name, example, extra: dict):
  abstract = jax.eval_shape(functools.partial(module.init, jax.random.key(0)), example)
  return abstract, {**expected_keys(abstract, module_name), **extra}


def convert_generators(state_dicts, model: dict, source) -> dict[str, dict]:
  """{"a": variables, "b": variables} of the two AdaINGens, each checked key by key."""
  return {d: _load(state_dicts[d], *generator_keys(model, d), f"{source} (gen_{d})") for d in DOMAINS}


def convert_discriminators(state_dicts, model: dict, source) -> dict[str, dict]:
  """{"a": variables, "b": variables} of the two MsImageDis, each checked key by key."""
  return {d: _load(state_dicts[d], *discriminator_keys(model, d), f"{source} (dis_{d})") for d in DOMAINS}


def _load(state_dict, abstract, expected, source) -> dict:
  torch_map.check_keys(state_dict, expected, source, _HINT)
  return torch_map.convert_variables(state_dict, expected, abstract)


def convert(checkpoint, *, variant: str = "munit", config=None, dis=None) -> Converted:
  """Reads, checks and converts the generators (and --dis's discriminators); writes nothing."""
  generators = read_pair(checkpoint, "generator")
  discriminators = read_pair(dis, "discriminator") if dis else None
  model = detect(generators, discriminators, checkpoint, variant=variant, config_path=config, dis_source=dis)
  return Converted(model, convert_generators(generators, model, checkpoint),
                   convert_discriminators(discriminators, model, dis) if dis else None)
