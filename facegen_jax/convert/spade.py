"""NVlabs/SPADE generator (latest_net_G.pth, FaceIt-SPADE's too) -> a facegen_jax run directory.

  python -m facegen_jax.convert spade --checkpoint latest_net_G.pth --out runs/faceit
  python -m facegen_jax.generate --workdir runs/faceit --labels maps/ --out out/

The generator's options are read from the state_dict: label_nc (the SPADE convs' input channels, i.e. the
original's semantic_nc), ngf, use_vae and z_dim (fc is a Linear), spectral norm (`weight_orig` keys), the
param-free norm (batch if `param_free_norm.running_mean` exists, else instance) and 'most' (an `up_4` block).
What no shape tells comes from flags: --crop_size (default 128, FaceIt's), --aspect_ratio, and 'more' vs
'normal' without use_vae (--num_upsampling_layers; with use_vae fc's size decides). The file is read by
`torch_reader` (torch is not needed): a plain state_dict as NVlabs saves it (`net.cpu().state_dict()`), one
nested under "state_dict", "netG" etc., or with DataParallel's `module.` prefix.

Keys map as `facegen_jax.nets.spade`'s docstring states (the tables `GENERATOR_KEYS` and `ENCODER_KEYS`; layouts,
spectral vectors and the check are `torch_map`'s). Spectral-norm layers saved by torch < 1.0 have no `weight_v`,
only the normalised `weight`: v is solved from weight_orig, weight_u and weight as torch's load_state_dict
pre-hook does (in float64). Every key must be used and every variable filled with its shape, or a UserError
names the keys. `--encoder latest_net_E.pth` adds a use_vae model's encoder (its layer6 must
exist: the original's encoder runs only at crop >= 256).

The output is a full SPADE train state: the converted G (and encoder), a fresh D (`--ndf`, the original's 64)
and fresh optimizers, so `python -m facegen_jax.main --config configs/spade.py --workdir DIR` fine-tunes it when
its config.model matches the one in DIR/config.json. Not supported: instance-edge maps (a model trained without
--no_instance has label_nc + 1 inputs, which would be read as one more class) and SPADE kernels other than 3x3.
An --aspect_ratio other than 1 converts, but `generate` and the input pipeline make square maps only.
"""

from __future__ import annotations

import functools

import jax

from configs import spade as spade_configs
from facegen_jax import compile as compile_lib
from facegen_jax import families
from facegen_jax import rundir
from facegen_jax.convert import torch_map
from facegen_jax.errors import UserError
from facegen_jax.nets import spade as spade_nets
from facegen_jax.nets import spectral_norm as sn_lib

# Module names as facegen_jax.nets.spade's docstring states them: ours are the original's, without the indices of
# the nn.Sequentials holding the weights.
GENERATOR_KEYS = torch_map.KeyTable(modules={"mlp_shared": "mlp_shared.0"})
ENCODER_KEYS = torch_map.KeyTable(modules={r"layer\d+": r"\g<0>.0"})


def add_arguments(parser) -> None:
  parser.add_argument("--checkpoint", required=True, help="the generator's state_dict, e.g. latest_net_G.pth")
  parser.add_argument("--out", required=True, help="the run directory to write (config.json + checkpoint)")
  parser.add_argument("--encoder", help="use_vae models: the encoder's state_dict, e.g. latest_net_E.pth")
  parser.add_argument("--crop_size", type=int, default=128, help="the original's --crop_size (FaceIt: 128)")
  parser.add_argument("--aspect_ratio", type=float, default=1.0, help="the original's --aspect_ratio")
  parser.add_argument("--num_upsampling_layers", choices=tuple(spade_nets.NUM_UPSAMPLING_LAYERS),
                      help="default: read from the checkpoint ('most' has up_4; with use_vae fc's size "
                           "tells), else 'normal'")
  parser.add_argument("--ndf", type=int, default=64, help="width of the fresh discriminator for fine-tuning")


def run(args) -> None:
  config = convert(args.checkpoint, args.out, encoder=args.encoder, crop_size=args.crop_size,
                   aspect_ratio=args.aspect_ratio, num_upsampling_layers=args.num_upsampling_layers,
                   ndf=args.ndf)
  m = config.model
  print(f"wrote {args.out}: SPADE generator{' + encoder' if args.encoder else ''} (label_nc {m.label_nc}, "
        f"ngf {m.ngf}, crop {m.crop_size}, {m.num_upsampling_layers}, use_vae {m.use_vae}); generate with "
        f"`python -m facegen_jax.generate --workdir {args.out} --labels MAPS --out OUT`")


def _not_a_generator(keys, source) -> UserError:
  """Says what the file seems to be instead, from its key names."""
  if any(k.startswith(("discriminator_", "model0.")) for k in keys):
    seems = "a discriminator (latest_net_D.pth)"
  elif any(k.startswith(("fc_mu.", "layer1.")) for k in keys):
    seems = "the VAE encoder (latest_net_E.pth): pass it with --encoder"
  elif any(k.startswith(("features.", "classifier.")) for k in keys):
    seems = "VGG19 weights (convert those with `python -m facegen_jax.convert vgg19`)"
  else:
    seems = f"something else (keys {', '.join(sorted(keys)[:4])}, ...)"
  return UserError(f"{source} is not a SPADE generator state_dict (no fc, head_0, conv_img); it looks like "
                   f"{seems}. Pass the generator, e.g. checkpoints/<name>/latest_net_G.pth")


def _weight(state_dict, module: str):
  """A conv's weight, spectral-normalised or not."""
  return state_dict.get(f"{module}.weight_orig", state_dict.get(f"{module}.weight"))


def detect_generator(state_dict, source, *, crop_size: int = 128, aspect_ratio: float = 1.0,
                     num_upsampling_layers: str | None = None) -> dict:
  """config.model fields from key names and shapes (values need only `.shape`)."""
  head, mlp = _weight(state_dict, "head_0.conv_0"), state_dict.get("head_0.norm_0.mlp_shared.0.weight")
  if head is None or mlp is None or "fc.weight" not in state_dict or "conv_img.weight" not in state_dict:
    raise _not_a_generator(state_dict, source)
  if head.shape[0] % 16:
    raise UserError(f"{source}: head_0 has {head.shape[0]} channels, not 16 * ngf: not an NVlabs SPADE generator")
  if tuple(mlp.shape[2:]) != (3, 3):
    raise UserError(f"{source}: SPADE convs are {mlp.shape[2]}x{mlp.shape[3]} (norm_G ...{mlp.shape[2]}x"
                    f"{mlp.shape[3]}); only 3x3 (e.g. spectralspadesyncbatch3x3) converts")
  fc = state_dict["fc.weight"]
  model = dict(label_nc=int(mlp.shape[1]), ngf=int(head.shape[0]) // 16, crop_size=crop_size,
               aspect_ratio=aspect_ratio, use_vae=len(fc.shape) == 2,
               g_spectral_norm="head_0.conv_0.weight_orig" in state_dict,
               g_param_free_norm=("batch" if "head_0.norm_0.param_free_norm.running_mean" in state_dict
                                  else "instance"))
  if model["use_vae"]:
    model["z_dim"] = int(fc.shape[1])
  model["num_upsampling_layers"] = _upsampling_layers(
      state_dict, source, model, fc.shape[0] // (16 * model["ngf"]), num_upsampling_layers)
  return model


def _latent_cells(mode: str, crop_size: int, aspect_ratio: float) -> int:
  sw = crop_size // 2 ** spade_nets.NUM_UPSAMPLING_LAYERS[mode]
  return round(sw / aspect_ratio) * sw


def _upsampling_layers(state_dict, source, model, fc_cells: int, requested: str | None) -> str:
  """'most' iff up_4 exists; with use_vae the fc size picks 'normal' or 'more'; else the flag or 'normal'."""
  crop, aspect = model["crop_size"], model["aspect_ratio"]
  has_up_4 = any(k.startswith("up_4.") for k in state_dict)
  if requested is not None and has_up_4 != (requested == "most"):
    raise UserError(f"{source} {'has' if has_up_4 else 'has no'} up_4 block, so it was trained with "
                    f"num_upsampling_layers {'most' if has_up_4 else 'normal or more'}: drop "
                    f"--num_upsampling_layers {requested}")
  candidates = ["most"] if has_up_4 else ["normal", "more"]
  if model["use_vae"]:
    fits = [m for m in candidates if _latent_cells(m, crop, aspect) == fc_cells]
    if not fits:
      raise UserError(
          f"{source}: fc maps z to {fc_cells} cells of 16*ngf channels, which no num_upsampling_layers gives "
          f"at --crop_size {crop} --aspect_ratio {aspect}: pass the --crop_size (and --aspect_ratio) the model "
          "was trained with")
    if requested is not None and requested not in fits:
      raise UserError(f"{source}: fc's size fits num_upsampling_layers {fits[0]!r} at --crop_size {crop}, "
                      f"not {requested!r}: drop --num_upsampling_layers or fix --crop_size")
    candidates = fits
  mode = requested if requested in candidates else candidates[0]
  scale = 2 ** spade_nets.NUM_UPSAMPLING_LAYERS[mode]
  if crop % scale:
    raise UserError(f"--crop_size {crop} is not a multiple of {scale}, as num_upsampling_layers {mode!r} needs: "
                    "pass the model's crop size (FaceIt: 128)")
  return mode


def detect_encoder(state_dict, source) -> dict:
  """ngf, z_dim and spectral norm of the original's ConvEncoder."""
  first = _weight(state_dict, "layer1.0")
  if first is None or "fc_mu.weight" not in state_dict:
    raise UserError(f"--encoder {source} is not a SPADE ConvEncoder state_dict (no layer1, fc_mu): pass "
                    "latest_net_E.pth")
  if _weight(state_dict, "layer6.0") is None:
    raise UserError(f"--encoder {source} has no layer6: the original builds it only for crop >= 256 and its "
                    "encoder fails below that (fc_mu gets 8x8 instead of 4x4), so this encoder cannot run")
  return dict(ngf=int(first.shape[0]), z_dim=int(state_dict["fc_mu.weight"].shape[0]),
              e_spectral_norm="layer1.0.weight_orig" in state_dict)


def build_config(model: dict, *, ndf: int = 64):
  config = spade_configs.get_config()
  config.model.update(model)
  config.model.ndf = ndf
  config.input.resolution = model["crop_size"]
  config.input.num_classes = model["label_nc"]
  return config


def _without_encoder(tree) -> dict:
  return {k: v for k, v in tree.items() if k != "encoder"}


def _generator_variables(state) -> dict:
  g = state.collections["g"]
  return {"params": _without_encoder(state.params["g"]), "batch_stats": g["batch_stats"],
          sn_lib.SPECTRAL_STATS: _without_encoder(g[sn_lib.SPECTRAL_STATS])}


def _encoder_variables(state) -> dict:
  return {"params": state.params["g"]["encoder"],
          sn_lib.SPECTRAL_STATS: state.collections["g"][sn_lib.SPECTRAL_STATS].get("encoder", {})}


def _fresh_state(init, seed: int):
  """init_state for D, the optimizers and the encoder; G's values are replaced (XLA drops their sampling)."""
  def fresh(key):
    state = init(key)
    return state.replace(params={**state.params, "g": {k: v for k, v in state.params["g"].items() if k == "encoder"}})
  return compile_lib.jit(fresh, run_once=True)(jax.random.key(seed))


_G_HINT = ("Was it saved by NVlabs/SPADE's SPADEGenerator (latest_net_G.pth) with norm_G "
           "[spectral]spade{syncbatch,batch,instance}3x3?")
_E_HINT = "Was it saved by NVlabs/SPADE's ConvEncoder (latest_net_E.pth) with the generator's --ngf and --z_dim?"


def convert(checkpoint, out, *, encoder=None, crop_size: int = 128, aspect_ratio: float = 1.0,
            num_upsampling_layers: str | None = None, ndf: int = 64):
  """Writes the run directory `out`; returns its config."""
  g_dict = torch_map.read_state_dict(checkpoint, "generator (latest_net_G.pth)")
  model = detect_generator(g_dict, checkpoint, crop_size=crop_size, aspect_ratio=aspect_ratio,
                           num_upsampling_layers=num_upsampling_layers)
  e_dict = None
  if encoder is not None:
    if not model["use_vae"]:
      raise UserError(f"--encoder given, but {checkpoint} was trained without use_vae (its fc is a conv): "
                      "drop --encoder")
    e_dict = torch_map.read_state_dict(encoder, "encoder (latest_net_E.pth)")
    e_model = detect_encoder(e_dict, encoder)
    if (e_model["ngf"], e_model["z_dim"]) != (model["ngf"], model["z_dim"]):
      raise UserError(f"--encoder {encoder} has ngf {e_model['ngf']}, z_dim {e_model['z_dim']} but the generator "
                      f"ngf {model['ngf']}, z_dim {model['z_dim']}: pass the encoder of the same run")
    model["e_spectral_norm"] = e_model["e_spectral_norm"]
  config = build_config(model, ndf=ndf)
  init = functools.partial(families.init_state, config)
  abstract = jax.eval_shape(init, jax.random.key(0))
  # Both files are checked (and converted: numpy only) before the slow part, the fresh state's compilation.
  g = torch_map.load_variables(g_dict, _generator_variables(abstract), GENERATOR_KEYS, checkpoint, _G_HINT)
  e = None
  if e_dict is not None:
    e = torch_map.load_variables(e_dict, _encoder_variables(abstract), ENCODER_KEYS, encoder, _E_HINT)
  state = _fresh_state(init, config.seed)
  g_params, g_spectral = dict(g["params"]), dict(g[sn_lib.SPECTRAL_STATS])
  if e is not None:
    g_params["encoder"], g_spectral["encoder"] = e["params"], e[sn_lib.SPECTRAL_STATS]
  elif "encoder" in state.params["g"]:  # use_vae without --encoder: a fresh one (z ~ N(0, 1)).
    g_params["encoder"] = state.params["g"]["encoder"]
    g_spectral["encoder"] = state.collections["g"][sn_lib.SPECTRAL_STATS]["encoder"]
  state = state.replace(params={**state.params, "g": g_params}, collections={
      **state.collections, "g": {"batch_stats": g["batch_stats"], sn_lib.SPECTRAL_STATS: g_spectral}})
  rundir.save_state(out, config, state)
  return config
