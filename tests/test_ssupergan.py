"""SSuperGAN's families (vae, intro_vae, ssupervae, ssuper_dcgan), their configs and `generate`'s SSuperGAN flags.

Parameter counts come from each family's own init at the seed's configs (jax.eval_shape: nothing is computed).
Training tests use the tiny presets' compiled steps where they can (the contract test compiles the same ones).
The converter round trips reuse tests/test_convert_ssupergan.py's torch rebuilds of the originals.
"""

import functools
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax import families
from facegen_jax import generate
from facegen_jax import images as images_lib
from facegen_jax import npz
from facegen_jax import rundir
from facegen_jax import train
from facegen_jax.convert import efficientnet as convert_efficientnet
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.families import common
from facegen_jax.families import ssupergan as shared
from facegen_jax.nets import efficientnet
from input_pipeline import panels as panels_lib
from input_pipeline import pipeline
from tests import contract
from tests.conftest import init_state
from tests.conftest import tiny_config


def _read_png(path) -> np.ndarray:
  return np.asarray(Image.open(path).convert("RGB"))


def _config(name: str, preset: str = "", **overrides):
  config = importlib.import_module(f"configs.{name}").get_config(preset)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


# The originals' counts (torch's parameters of the seed configs' modules, docs in nets/ssupergan.py).
@pytest.mark.parametrize("name, preset, counts", [
    ("vae", "", {"vae": 23_141_891}),
    ("intro_vae", "", {"encoder": 13_740_864, "decoder": 9_401_027}),
    ("ssupervae", "", {"vae": 38_660_083}),
    ("ssupervae", "lstm", {"vae": 38_924_275}),
    # 47,505,584: b5 + fc 1024 (30,438,960) + LSTM 2 x 512 (6,299,648) + fc_mean/lgstd (1,049,600); G; local D.
    ("ssuper_dcgan", "", {"encoder": 37_788_208, "g": 6_951_808, "d": 2_765_568}),
])
def test_parameter_counts_of_the_seed_configs(name, preset, counts):
  config = _config(name, preset)
  families.get_family(name).validate(config)
  abstract = jax.eval_shape(functools.partial(families.get_family(name).init, config), jax.random.key(0))
  assert {group: common.count_params(p) for group, p in abstract["params"].items()} == counts


def test_losses_are_the_originals():
  rng = np.random.default_rng(0)
  x, mean = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
  mu, log_std = rng.normal(size=(2, 5)), 0.3 * rng.normal(size=(2, 5))
  # -log N(x; mean, 1) summed over pixels, and the closed-form KL to N(0, 1) summed over the latent.
  nll = -np.sum(-0.5 * (x - mean) ** 2 - 0.5 * np.log(2 * np.pi), axis=(1, 2, 3))
  std = np.exp(log_std)
  kl = np.sum(np.log(1 / std) + (std ** 2 + mu ** 2) / 2 - 0.5, axis=1)
  np.testing.assert_allclose(shared.gaussian_nll(jnp.asarray(x), jnp.asarray(mean)), nll, rtol=1e-5)
  np.testing.assert_allclose(shared.kl_divergence(jnp.asarray(mu), jnp.asarray(log_std)), kl, rtol=1e-5)
  errors = shared.reconstruction_errors(jnp.zeros((1, 2, 2, 3)), jnp.full((1, 2, 2, 3), 0.2))
  np.testing.assert_allclose(errors["mse"], [0.04], rtol=1e-6)
  np.testing.assert_allclose(errors["psnr"], [10 * np.log10(4 / 0.04)], rtol=1e-6)


def test_intro_vae_prior_hinge_is_the_papers_margin_unless_the_original_flag():
  """L_E = KL + alpha (relu(m - KL_r) + relu(m' - KL_pp)) + beta L_ae: m' = m (110, the paper's) by default,
  alpha (0.25, the original's typo) with intro.original_xp_hinge."""
  from facegen_jax.families import intro_vae  # pylint: disable=g-import-not-at-top
  c = _config("intro_vae").intro
  assert (c.alpha, c.beta, c.margin) == (0.25, 5.0, 110.0)
  terms = dict(kl=3.0, kl_r=200.0, kl_pp=40.0, ae=2.0)  # KL_r above the margin: its hinge is 0.
  paper = 3.0 + 0.25 * (0.0 + (110.0 - 40.0)) + 5.0 * 2.0
  assert float(intro_vae.encoder_objective(c, **terms)) == pytest.approx(paper)
  c.original_xp_hinge = True
  assert float(intro_vae.encoder_objective(c, **terms)) == pytest.approx(3.0 + 0.0 + 5.0 * 2.0)  # 0.25 - 40 < 0.
  assert float(intro_vae.encoder_objective(c, **{**terms, "kl_pp": 0.05})) == pytest.approx(
      3.0 + 0.25 * 0.2 + 10.0)


def test_vae_reconstruction_error_falls():
  """A short run of the tiny VAE on synthetic faces (a constant learning rate: the tiny preset's decays to 0 over
  its 4 steps): the reconstruction MSE of the last steps is well below the first steps'."""
  config = tiny_config("vae", **{"optim.vae.decay_start_step": None, "optim.vae.lr": 1e-3, "num_train_steps": 60})
  programs = train.Programs(config)
  state = programs.init(programs.init_key)
  iterator = pipeline.create_train_iterator(config.input, seed=0, global_batch_size=config.batch_size)
  mse = []
  for _ in range(60):
    state, metrics = programs.step(state, programs.global_batch(next(iterator)))
    mse.append(float(metrics["vae/recon_mse"]))
  first, last = np.mean(mse[:5]), np.mean(mse[-5:])
  assert last < 0.6 * first, (first, last, mse)


def test_ssuper_dcgan_single_backward_gives_d_the_g_loss_gradient():
  """The original's summed backward gives D another update than the separate D step (errG's gradient in it).
  One tiny step each, compiled at XLA's lowest optimisation."""
  config = tiny_config("ssuper_dcgan")
  family = families.get_family("ssuper_dcgan")
  state = init_state(config)
  batch = next(pipeline.create_train_iterator(config.input, seed=0, global_batch_size=config.batch_size))
  steps = {}
  for flag in (False, True):
    config.gan.original_single_backward = flag
    step = compile_lib.jit(functools.partial(family.train_step, config), run_once=True)
    steps[flag] = step(state, batch, jax.random.key(3))[0]
  separate, single = steps[False], steps[True]
  moved = lambda a, b: any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert moved(separate.params["d"], single.params["d"])


def test_init_loads_the_backbones_imagenet_weights(tmp_path):
  """config.model.backbone_weights: the backbone's variables are the file's (its fc fresh, to embed_dim)."""
  abstract = efficientnet.abstract_variables("efficientnet-b0", 1000)
  rng = np.random.default_rng(0)
  stored = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), abstract)
  path = tmp_path / "efficientnet-b0.npz"
  npz.write(path, convert_efficientnet.to_arrays(stored, "efficientnet-b0"))
  config = tiny_config("ssupervae", **{"model.backbone": "efficientnet-b0", "model.backbone_weights": str(path)})
  families.get_family("ssupervae").validate(config)
  variables = compile_lib.jit(functools.partial(families.get_family("ssupervae").init, config), run_once=True)(
      jax.random.key(0))
  backbone = variables["params"]["vae"]["backbone"]
  assert backbone["fc"]["kernel"].shape == (1280, config.model.embed_dim)
  for collection, tree in (("params", backbone), ("batch_stats", variables["collections"]["vae"]["batch_stats"][
      "backbone"])):
    want = {k: v for k, v in stored[collection].items() if k != "fc"}
    got = {k: v for k, v in tree.items() if k != "fc"}
    jax.tree.map(np.testing.assert_array_equal, got, want)


# --- generate ---


def _run_directory(tmp_path, name: str):
  config = tiny_config(name)
  state = init_state(config)
  workdir = tmp_path / f"{name}_run"
  rundir.save_state(workdir, config, jax.device_get(state))
  return workdir, config, state


def test_generate_prior_samples_and_reconstructions(tmp_path):
  workdir, config, state = _run_directory(tmp_path, "vae")
  assert generate.main(["--workdir", str(workdir), "--num", "3", "--out", str(tmp_path / "prior")]) == 0
  assert sorted(p.name for p in (tmp_path / "prior").iterdir()) == ["000000.png", "000001.png", "000002.png"]
  faces = tmp_path / "faces"
  faces.mkdir()
  rng = np.random.default_rng(1)
  for name in ("a", "b"):
    images_lib.save_png(rng.integers(0, 256, (32, 32, 3), np.uint8), faces / f"{name}.png")
  assert generate.main(["--workdir", str(workdir), "--images", str(faces), "--out", str(tmp_path / "recon"),
                        "--save_raw"]) == 0
  x = np.stack([np.asarray(_read_png(faces / f"{n}.png"), np.float32) / 127.5 - 1 for n in "ab"])
  reconstruct = jax.jit(lambda variables, x: shared.vae_network(config).apply(variables, x, train=False).image)
  want = reconstruct({"params": state.params["vae"], **state.collections["vae"]}, x)
  got = np.stack([np.load(tmp_path / "recon" / f"{n}.npy") for n in "ab"])
  np.testing.assert_allclose(got, want, atol=1e-5)


def _sequences(config, seq_dir, count=2):
  p = config.input.panels
  source = panels_lib.SyntheticPanels(count, num_panels=p.num_panels, panel_size=p.panel_size,
                                      face_size=p.face_size, domain=p.domain)
  return panels_lib.export_sequences([source[i] for i in range(count)], str(seq_dir))


def test_generate_completes_panels_and_pastes(tmp_path):
  workdir, config, state = _run_directory(tmp_path, "ssupervae")
  seq_dir, out = tmp_path / "seq", tmp_path / "out"
  ids = _sequences(config, seq_dir)
  assert generate.main(["--workdir", str(workdir), "--panels", str(seq_dir), "--out", str(out), "--save_raw",
                        "--paste", str(seq_dir / "boxes.json")]) == 0
  source = panels_lib.FolderPanels(str(seq_dir), num_panels=3, panel_size=config.input.panels.panel_size,
                                   face_size=32, faces=False)
  panels = np.stack([source[i]["panels"] for i in range(len(ids))]).astype(np.float32) / 127.5 - 1
  complete = jax.jit(lambda state, panels: families.get_family("ssupervae").generate(
      config, state, {"panels": panels}, jax.random.key(0))["face"])
  want = complete(state, panels)
  np.testing.assert_allclose(np.stack([np.load(out / f"{i}.npy") for i in ids]), want, atol=1e-5)
  boxes = json.loads((seq_dir / "boxes.json").read_text())
  for i in ids:
    pasted = np.asarray(_read_png(out / f"{i}_panel.png"))
    original = np.asarray(_read_png(seq_dir / i / "2.png"))
    x1, y1, x2, y2 = boxes[i]
    inside = np.zeros(original.shape[:2], bool)
    inside[y1:y2, x1:x2] = True
    np.testing.assert_array_equal(pasted[~inside], original[~inside])
    face = np.asarray(_read_png(out / f"{i}.png"), np.float32)
    want_box = panels_lib.resize_bilinear(face, (y2 - y1, x2 - x1))
    np.testing.assert_allclose(pasted[inside].reshape(want_box.shape), want_box, atol=0.51)


def test_generate_flags_name_the_problem(tmp_path, capsys):
  vae_dir, _, _ = _run_directory(tmp_path, "vae")
  assert generate.main(["--workdir", str(vae_dir), "--panels", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
  assert "--panels and --paste are for models that complete panel sequences" in capsys.readouterr().err
  ssuper_dir, _, _ = _run_directory(tmp_path, "ssupervae")
  assert generate.main(["--workdir", str(ssuper_dir), "--num", "2", "--out", str(tmp_path / "o")]) == 2
  assert "completes panel sequences: give --panels SEQ_DIR" in capsys.readouterr().err
  assert generate.main(["--workdir", str(ssuper_dir), "--images", str(tmp_path), "--panels",
                        str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
  assert "is not a directory" in capsys.readouterr().err


def test_configs_validate_and_name_their_presets():
  for name, presets in (("vae", ("", "cpu", "tiny")), ("intro_vae", ("", "cpu", "tiny")),
                        ("ssupervae", ("", "lstm", "cpu", "cpu_lstm", "tiny")),
                        ("ssuper_dcgan", ("", "cpu", "tiny"))):
    for preset in presets:
      config = _config(name, preset)
      families.get_family(name).validate(config)
      pipeline.validate(config.input)
    with pytest.raises(ValueError, match="unknown preset"):
      _config(name, "nope")
  cpu = _config("ssupervae", "cpu")
  assert (cpu.model.backbone, cpu.input.panels.panel_size, cpu.batch_size) == ("efficientnet-b0", 96, 4)
  assert _config("intro_vae").intro.original_xp_hinge is False
  assert _config("ssuper_dcgan").gan.original_single_backward is False


# --- convert ssupergan's run directories against the originals (torch rebuilds of tests/test_convert_ssupergan.py) ---


def _torch_cases():
  return pytest.importorskip("tests.test_convert_ssupergan", reason="torch and efficientnet_pytorch rebuild the "
                             "originals: see requirements-test.txt")


def _convert_run(tmp_path, cases, model: str, reference, *extra, parallel=False):
  checkpoint, out = tmp_path / f"{model}-checkpoint-epoch7.pth", tmp_path / f"{model}_run"
  cases._save_checkpoint(checkpoint, reference, parallel=parallel)  # pylint: disable=protected-access
  assert convert_main(["ssupergan", "--model", model, "--checkpoint", str(checkpoint), "--out", str(out),
                       *extra]) == 0
  return out


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vae", "intro_vae"])
def test_converted_vae_reconstructs_as_the_original(tmp_path, model):
  """generate --images on the converted run = the original's decoder(mu) of the same faces, within 1e-4 of the
  range (a 16 px IntroVAE network with random BatchNorm statistics, eval mode)."""
  cases = _torch_cases()
  cases.torch.manual_seed(0)
  reference = cases._randomize(cases.TorchIntroVAE(8, [8, 16], 16), 1).eval()  # pylint: disable=protected-access
  workdir = _convert_run(tmp_path, cases, model, reference)
  assert rundir.load_config(workdir).family == model
  faces = tmp_path / "faces"
  faces.mkdir()
  rng = np.random.default_rng(2)
  for name in ("a", "b", "c"):
    images_lib.save_png(rng.integers(0, 256, (16, 16, 3), np.uint8), faces / f"{name}.png")
  assert generate.main(["--workdir", str(workdir), "--images", str(faces), "--out", str(tmp_path / "recon"),
                        "--save_raw", "--batch_size", "2"]) == 0
  x = np.stack([_read_png(faces / f"{n}.png").astype(np.float32) / 127.5 - 1 for n in "abc"])
  with cases.torch.no_grad():
    mu, _ = reference.encode(cases._nchw(x))  # pylint: disable=protected-access
    want = cases._nhwc(reference.decoder(mu))  # pylint: disable=protected-access
  got = np.stack([np.load(tmp_path / "recon" / f"{n}.npy") for n in "abc"])
  cases._close(got, want, rtol=1e-4)  # pylint: disable=protected-access


@pytest.mark.slow
@pytest.mark.parametrize("model", ["plain_ssupervae", "ssuper_dcgan"])
def test_converted_ssuper_model_completes_as_the_original(tmp_path, model):
  """generate --panels on the converted run = the original's completion (decoder(mu) / G(mu) of its sequence
  encoder, eval mode) of the same panels, within 1e-4 of the range (EfficientNet-b0 on 32 px panels)."""
  cases = _torch_cases()
  cases.torch.manual_seed(1)
  panel = cases._PANEL  # pylint: disable=protected-access
  if model == "plain_ssupervae":
    reference = cases.TorchSSuperVAE("efficientnet-b0", 8, 8, [8, 16], 16, use_lstm=True, lstm_hidden=6,
                                     bidirectional=False, num_layers=2)
  else:
    reference = cases.TorchSSuperDCGAN("efficientnet-b0", **cases._DCGAN)  # pylint: disable=protected-access
  reference = cases._randomize(reference, 3).eval()  # pylint: disable=protected-access
  workdir = _convert_run(tmp_path, cases, model, reference, "--backbone", "efficientnet-b0", "--panel_size",
                         str(panel), parallel=model == "ssuper_dcgan")
  seq_dir = tmp_path / "seq"
  rng = np.random.default_rng(4)
  for name in ("s0", "s1"):
    (seq_dir / name).mkdir(parents=True)
    for j in range(3):
      images_lib.save_png(rng.integers(0, 256, (panel, panel, 3), np.uint8), seq_dir / name / f"{j}.png")
  assert generate.main(["--workdir", str(workdir), "--panels", str(seq_dir), "--out", str(tmp_path / "faces"),
                        "--save_raw"]) == 0
  panels = np.stack([np.stack([_read_png(seq_dir / n / f"{j}.png") for j in range(3)]) for n in ("s0", "s1")])
  panels = panels.astype(np.float32) / 127.5 - 1
  with cases.torch.no_grad():
    if model == "plain_ssupervae":
      mu, _ = reference.encoder(cases._nchw(panels))  # pylint: disable=protected-access
      want = reference.decoder(mu)
    else:
      mu, _ = reference.seq_encoder(cases._nchw(panels))  # pylint: disable=protected-access
      want = reference.generator(mu[:, :, None, None])
  got = np.stack([np.load(tmp_path / "faces" / f"{n}.npy") for n in ("s0", "s1")])
  cases._close(got, cases._nhwc(want), rtol=1e-4)  # pylint: disable=protected-access


# --- the family contract (tests/contract.py) ---

CONTRACT_FAMILIES = ("intro_vae", "ssuper_dcgan", "ssupervae", "vae")


@pytest.mark.parametrize("name", CONTRACT_FAMILIES)
def test_keeps_the_family_contract(name, tmp_path):
  contract.check(tiny_config(name), tmp_path)
