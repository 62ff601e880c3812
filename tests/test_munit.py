"""The MUNIT / SATNet family (facegen_jax/families/munit.py): what the generic contract test does not see.

The step-based tests share one compiled step, the tiny preset's (SATNet-shaped: attention, spectral norm, hinge,
cycle, a random-init identity network), which is also the contract case at the end of this file, so the
persistent compilation cache serves the second of them; the sample grid is the contract test's program too. The
rest run single network calls eagerly at toy sizes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import compile as compile_lib
from facegen_jax import errors
from facegen_jax import npz
from facegen_jax import rundir
from facegen_jax import train
from facegen_jax import translate
from facegen_jax.families import munit
from facegen_jax.nets import sphereface
from facegen_jax.nets import spectral_norm as sn_lib
from input_pipeline import pipeline
from tests import contract
from tests.conftest import tiny_config

_SPECTRAL = sn_lib.SPECTRAL_STATS


@pytest.fixture(scope="module")
def trained():
  """Two steps of the tiny preset on one batch -> (config, programs, host batch, host states 0..2, metrics)."""
  config = tiny_config("munit")
  munit.validate(config)
  programs = train.Programs(config)
  state = programs.init(programs.init_key)
  batch = next(pipeline.create_train_iterator(config.input, seed=0, global_batch_size=config.batch_size))
  states, metrics = [jax.device_get(state)], []
  for _ in range(2):
    state, m = programs.step(state, programs.global_batch(batch))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return config, programs, batch, states, metrics


def test_metrics_and_the_frozen_identity_network(trained):
  _, _, _, states, metrics = trained
  for m in metrics:
    assert {"d/a", "d/b", "g/gan", "g/recon_x", "g/recon_s", "g/recon_c", "g/cycle", "g/identity",
            "g/identity_cos_a2b", "g/identity_cos_b2a"} <= set(m)
    assert all(np.isfinite(v) for v in m.values()), m
    assert float(m["g/identity"]) > 0  # threshold 1 in the tiny preset: the term acts
  assert munit.IDENTITY not in states[0].opt_state  # no optimizer: frozen
  jax.tree.map(np.testing.assert_array_equal, states[0].params[munit.IDENTITY], states[-1].params[munit.IDENTITY])


def _iterate(kernel, u, times: int):
  for _ in range(times):
    u, v = sn_lib.power_iteration(jnp.asarray(kernel), jnp.asarray(u), normalize_fn=sn_lib.l2normalize)
  return np.asarray(u), np.asarray(v)


def _close(stats, u, v):
  np.testing.assert_allclose(stats["u"], u, atol=2e-6)
  np.testing.assert_allclose(stats["v"], v, atol=2e-6)


def test_every_forward_iterates_the_spectral_norms_in_the_originals_order(trained):
  """One step = the original's iteration: each call of a spectral-normed module is one power iteration from
  the vectors the previous call left (G's weights are fixed until the step's end; D's change between its D-step
  calls and its G-step call)."""
  _, _, _, states, _ = trained
  before, after = states[0], states[1]
  for domain in munit.DOMAINS:
    # enc_content: the D step's content, then the G step's encode of the real and of the translated image.
    # dec: the D step's translation, then the G step's reconstruction, translation and cycle.
    for part, calls in (("enc_content", 3), ("dec", 4)):
      for conv in ("f_conv", "k_conv"):
        kernel = before.params["g"][domain][part]["attention"][conv]["kernel"]
        start = before.collections["g"][_SPECTRAL][domain][part]["attention"][conv]
        _close(after.collections["g"][_SPECTRAL][domain][part]["attention"][conv], *_iterate(kernel, start["u"],
                                                                                              calls))
    for path in (("cnn_0", "conv_1", "conv"), ("cnn_2", "attention", "g_conv")):
      get = lambda tree, path=path: tree[path[0]][path[1]][path[2]]
      start = get(before.collections["d"][_SPECTRAL][domain])
      u, _ = _iterate(get(before.params["d"][domain])["kernel"], start["u"], 2)  # D(fake), D(real)
      _close(get(after.collections["d"][_SPECTRAL][domain]), *_iterate(get(after.params["d"][domain])["kernel"], u,
                                                                        1))  # G step: D(fake) with the new D


def _with_attention_gamma(params, value: float):
  """Self-attention's gamma starts at 1e-8, which hides it from the outputs; at `value` its sigma shows."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, value) if jax.tree_util.keystr(path).endswith("['gamma']") else x, params)


def test_sample_threads_the_vectors_through_its_calls_on_copies(trained):
  config, programs, batch, states, _ = trained
  state = states[0]  # un-iterated vectors: one iteration more or less changes sigma visibly
  state = state.replace(params={**state.params, "g": _with_attention_gamma(state.params["g"], 1.0)})
  state = jax.device_put(state, programs.state_sharding)  # as the contract test calls it: the same program
  inputs = munit.sample_inputs(config, jax.random.key(0), batch)
  out = programs.sample(state, programs.replicate(inputs))
  n = config.num_sample_images
  assert list(out) == ["a", "a2b_style0", "a2b_style1", "a2b_style2", "a2b_b2a",
                       "b", "b2a_style0", "b2a_style1", "b2a_style2", "b2a_a2b"]
  again = programs.sample(state, programs.replicate(inputs))  # the state's vectors are not moved by sampling
  np.testing.assert_array_equal(np.asarray(out["a2b_style1"]), np.asarray(again["a2b_style1"]))

  second, stale = _fast(_style1_decodes, config)(
      state.params["g"], state.collections["g"][_SPECTRAL], inputs["a/image"][:n], inputs["a2b/styles"])
  np.testing.assert_allclose(np.asarray(out["a2b_style1"]), np.asarray(second), atol=2e-5)
  assert np.abs(np.asarray(stale) - np.asarray(second)).max() > 1e-3


def _fast(fn, config):
  """fn(config, ...) as one small program at XLA's lowest optimisation level (seconds to compile; op by op, eagerly,
  it takes minutes)."""
  return jax.jit(functools.partial(fn, config), compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)


def _style1_decodes(config, g, stats, x, styles):
  """a -> b with the second style, decoded after the first style's call (as sample does) and from the stored
  vectors (stale)."""
  gen = munit._generator(config)
  apply = lambda domain, vectors, *args, method: gen.apply({"params": g[domain], _SPECTRAL: vectors}, *args,
                                                           method=method, mutable=[_SPECTRAL])
  (content, _), _ = apply("a", stats["a"], x, method="encode")
  _, moved = apply("b", stats["b"], content, styles[0], method="decode")
  second, _ = apply("b", moved[_SPECTRAL], content, styles[1], method="decode")
  stale, _ = apply("b", stats["b"], content, styles[1], method="decode")
  return second, stale


def test_identity_loss_has_a_gradient_into_g_and_none_into_sphere20a(trained):
  config, _, batch, states, _ = trained
  state = states[0]
  grads = _fast(_identity_gradient, config)(state.params["g"], state.params[munit.IDENTITY], munit._stats(state),
                                            jnp.asarray(batch["a/image"]))
  # numpy: no program compiled per leaf shape
  norm = lambda tree: float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(tree)))
  assert norm(grads["b"]["dec"]) > 0 and norm(grads["a"]["enc_content"]) > 0
  assert norm(grads["a"]["enc_style"]) == 0 and norm(grads["b"]["enc_content"]) == 0
  # The step differentiates G's parameters only; sphere20a has no optimizer and stays as it was
  # (test_metrics_and_the_frozen_identity_network).


def _identity_gradient(config, g, identity, stats, x_a):
  """The gradient in G's parameters of the identity term of a -> b (a random style)."""
  def loss(g):
    calls = munit._Networks(config, {"g": g}, stats)
    x_ab = calls.decode("b", calls.content("a", x_a), jnp.zeros((x_a.shape[0], config.model.gen.style_dim)))
    [cos] = munit.identity_terms(config, identity, [(x_ab, x_a)])
    return jax.nn.relu(config.identity.threshold - cos)
  return jax.grad(loss)(g)


def test_identity_terms_are_satnets_loss():
  params = sphereface.Sphere20a(0, (4, 4, 4, 4), 8).init(jax.random.key(0), jnp.zeros((1, 112, 96, 3)))["params"]
  translated, source = (jax.random.uniform(jax.random.key(i), (2, 112, 96, 3), minval=-1, maxval=1)
                        for i in (1, 2))
  config = tiny_config("munit")
  [cos] = munit.identity_terms(config, params, [(translated, source)])
  expected = sphereface.identity_loss(params, translated, source, threshold=1.0)
  np.testing.assert_allclose(jax.nn.relu(1.0 - cos), expected, rtol=1e-5)


def test_identity_weights_come_from_the_file_as_an_operand(tmp_path):
  params = sphereface.Sphere20a(3, (4, 4, 4, 4), 8).init(jax.random.key(0), jnp.zeros((1, 112, 96, 3)))["params"]
  arrays = {f"{layer}/{leaf}": np.asarray(v) for layer, leaves in params.items() for leaf, v in leaves.items()}
  npz.write(tmp_path / "sphere.npz", arrays)
  config = tiny_config("munit", **{"identity.weights": str(tmp_path / "sphere.npz"), "identity.random_init": False})
  munit.validate(config)
  fn = jax.jit(lambda key: munit._identity_params(config, key))
  loaded = fn(jax.random.key(0))
  assert "fc6" not in loaded  # only fc5's embedding is used
  for layer in loaded:
    jax.tree.map(np.testing.assert_array_equal, loaded[layer], jax.device_get(params[layer]))
  hlo = fn.lower(jax.random.key(0)).as_text()
  fc5 = "x".join(map(str, arrays["fc5/kernel"].shape))
  assert "callback" in hlo and not [line for line in hlo.splitlines() if "constant" in line and fc5 in line]


def test_translate_with_a_style_image_and_random_styles(trained, tmp_path):
  config, _, _, states, _ = trained
  rundir.save_state(tmp_path / "run", config, states[-1], step=2)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  toons = tmp_path / "toons"
  toons.mkdir()
  for i in range(2):
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), np.uint8)).save(toons / f"t{i}.png")
  common = ["--workdir", str(tmp_path / "run"), "--images", str(toons), "--direction", "a2b", "--save_raw",
            "--batch_size", "2"]
  assert translate.main([*common, "--style", str(toons / "t1.png"), "--out", str(tmp_path / "styled")]) == 0
  assert translate.main([*common, "--num_styles", "2", "--seed", "3", "--out", str(tmp_path / "random")]) == 0
  assert sorted(p.name for p in (tmp_path / "styled").glob("*.png")) == ["t0.png", "t1.png"]
  assert sorted(p.name for p in (tmp_path / "random").glob("*.png")) == [
      "t0_style0.png", "t0_style1.png", "t1_style0.png", "t1_style1.png"]
  raw = {p.stem: np.load(p) for p in (tmp_path / "random").glob("*.npy")}
  assert raw["t0_style0"].shape == (32, 32, 3) and np.abs(raw["t0_style0"]).max() <= 1.0
  assert np.abs(raw["t0_style0"] - raw["t0_style1"]).max() > 1e-4  # two styles, two images


def test_gan_losses_are_munits_sums_over_scales():
  config = tiny_config("munit")
  rng = np.random.default_rng(0)
  real, fake = ([rng.normal(size=(2, s, s, 1)).astype(np.float32) for s in (4, 2, 1)] for _ in range(2))
  expected = {
      "lsgan": (sum(np.mean(f ** 2) + np.mean((r - 1) ** 2) for r, f in zip(real, fake)),
                sum(np.mean((f - 1) ** 2) for f in fake)),
      "hinge": (sum(np.mean(np.maximum(1 + f, 0)) + np.mean(np.maximum(1 - r, 0)) for r, f in zip(real, fake)),
                sum(-np.mean(f) for f in fake)),
      "nsgan": (sum(np.mean(np.log1p(np.exp(f))) + np.mean(np.log1p(np.exp(-r))) for r, f in zip(real, fake)),
                sum(np.mean(np.log1p(np.exp(-f))) for f in fake))}
  for gan_type, (d_loss, g_loss) in expected.items():
    config.model.dis.gan_type = gan_type
    np.testing.assert_allclose(munit.discriminator_gan_loss(config, real_logits=real, fake_logits=fake), d_loss,
                               rtol=1e-5)
    np.testing.assert_allclose(munit.generator_gan_loss(config, fake_logits=fake), g_loss, rtol=1e-5)


def test_calls_without_spectral_state_are_batched_to_the_same_result():
  """MUNIT's networks have no spectral state, so independent calls run as one (every norm is per image)."""
  config = tiny_config("munit", **{"model.attention": False, "model.dis.norm": "none"})
  dis = munit._discriminator(config)
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1, maxval=1)
  variables = dis.init(jax.random.key(0), x[:2])
  assert _SPECTRAL not in variables
  calls = munit._Networks(config, {"d": {"a": variables["params"]}}, {"g": {}, "d": {}})
  batched = calls.each("d", "a", None, [(x[:2],), (x[2:],)])
  one_by_one = [calls.discriminate("a", x[:2]), calls.discriminate("a", x[2:])]
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, atol=1e-6), batched, one_by_one)


@pytest.mark.parametrize("overrides,message", [
    ({"model.dis.gan_type": "wgan"}, r"config.model.dis.gan_type 'wgan'"),
    ({"input.resolution": 34}, r"divisible by 2\^n_downsample = 4"),
    ({"input.resolution": 16}, r"sees 4 px, and its n_layer=3 reflect-padded stride-2 convs need 8"),
    ({"loss_weights.vgg": 1.0}, r"config.vgg.weights is empty.*convert vgg16"),
    ({"identity.random_init": False}, r"convert sphereface --checkpoint sphere20a_X.pth --out sphere20a.npz"),
    ({"identity.weights": "missing.npz"}, r"config.identity.weights 'missing.npz' does not exist"),
    ({"model.dis.norm": "in"}, r"config.model.dis.norm 'in'"),
])
def test_bad_settings_are_config_errors(overrides, message):
  with pytest.raises(errors.ConfigError, match=message):
    munit.validate(tiny_config("munit", **overrides))


def test_eval_scores_are_per_record_identity_cosines(trained):
  config, _, batch, states, _ = trained
  state = states[-1]

  @functools.partial(jax.jit, compiler_options=compile_lib.CPU_FAST_COMPILE_OPTIONS)
  def scores_and_reference(state, images):
    inputs = munit.eval_inputs(config, jax.random.key(0), 2, {"a/image": images})
    generated = munit.generate(config, state, inputs, jax.random.key(1))
    resize = lambda x: jax.image.resize(x, (x.shape[0], 112, 96, 3), "linear")  # 32 px -> sphere20a's 112x96
    want = [sphereface.identity_cosine(state.params[munit.IDENTITY], resize(generated["a2b"][i:i + 1]),
                                       resize(images[i:i + 1]))[0] for i in range(2)]
    return munit.eval_scores(config, state, inputs, generated, "a2b"), jnp.stack(want)

  scores, want = scores_and_reference(state, jnp.asarray(batch["a/image"][:2]))
  assert set(scores) == {"identity_cos_a2b"}
  np.testing.assert_allclose(scores["identity_cos_a2b"], want, rtol=1e-5)
  no_identity = state.replace(params={k: v for k, v in state.params.items() if k != munit.IDENTITY})
  assert munit.eval_scores(config, no_identity, {}, {"a2b": None}, "a2b") == {}


def test_the_evaluator_logs_the_mean_identity_cosine(trained, monkeypatch, tmp_path):
  # Inception replaced by the images' channel means: this checks the identity figure's plumbing (per output, the
  # mean over exactly num_samples records, the last batch's padding dropped), not FID or the cosine itself.
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  from facegen_jax.metrics import evaluator as evaluator_lib  # pylint: disable=g-import-not-at-top
  _, _, _, states, _ = trained
  weights = tmp_path / "inception.npz"
  weights.write_bytes(b"stand-in")
  monkeypatch.setattr(evaluator_lib.inception, "load_params", lambda path: {})
  monkeypatch.setattr(evaluator_lib.fid, "feature_fn", lambda mesh: jax.jit(
      lambda variables, images: images.astype(jnp.float32).mean(axis=(1, 2))))
  config = tiny_config("munit", **{"eval.inception_weights": str(weights), "eval.num_samples": 3,
                                   "eval.batch_size": 2, "eval.kid": False})
  evaluator = evaluator_lib.Evaluator(config, Mesh(np.array(jax.devices()[:1]), ("data",)),
                                      stats_dir=tmp_path / "stats")
  scalars = evaluator(states[-1])
  assert {"eval/fid_a2b", "eval/fid_b2a", "eval/identity_cos_a2b", "eval/identity_cos_b2a"} <= set(scalars)
  # The evaluator's own batches (key fold_in(seed key, b)), by hand: records 0-1, then 2 and a zero pad.
  key = jax.random.key(config.eval.seed)
  figures = [np.asarray(evaluator._generate(states[-1], {"a/image": jnp.asarray(rows)}, 2, "a2b",
                                            jax.random.fold_in(key, b))[1]["identity_cos_a2b"])
             for b, rows in enumerate(_eval_rows(evaluator, 3))]
  np.testing.assert_allclose(scalars["eval/identity_cos_a2b"], np.concatenate(figures)[:3].mean(), rtol=1e-6)


def _eval_rows(evaluator, count):
  return [rows["a/image"] for _, _, rows in evaluator._local_batches(count, ("a/image",), domain="a")]


# --- the family contract (tests/contract.py) ---

CONTRACT_FAMILIES = ("munit",)


@pytest.mark.parametrize("name", CONTRACT_FAMILIES)
def test_keeps_the_family_contract(name, tmp_path, trained):
  # The `trained` fixture's compiled init and step.
  contract.check(tiny_config(name), tmp_path, programs=trained[1])
