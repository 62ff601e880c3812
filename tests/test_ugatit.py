"""U-GAT-IT / Face2webtoon's family (facegen_jax/families/ugatit.py): what the generic contract test does not see.

The tests here share one compiled step, the tiny preset's (Face2webtoon-like: group heads, selective
bottleneck, ADA), which is also the contract case at the end of this file, so the persistent compilation cache
serves the second of them.
"""

import importlib.util
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facegen_jax import errors
from facegen_jax import optim
from facegen_jax import rundir
from facegen_jax import state as state_lib
from facegen_jax import train
from facegen_jax import translate
from facegen_jax.families import ugatit
from facegen_jax.nets import ugatit as nets
from input_pipeline import pipeline
from input_pipeline import synthetic
from tests import contract
from tests.conftest import REPO, tiny_config

_SIZE = 32


def _batch(config, group: int, seed: int):
  """A batch as the pipeline gives it (so the step compiles as in the contract case below), with new images and
  every record in `group`."""
  batch = next(pipeline.create_train_iterator(config.input, seed=seed, global_batch_size=config.batch_size))
  return {**batch, "a/group": np.full_like(batch["a/group"], group), "b/group": np.full_like(batch["b/group"], group)}


@pytest.fixture(scope="module")
def programs():
  """The tiny preset's programs (Face2webtoon-like), compiled once for `trained` and the contract test."""
  config = tiny_config("ugatit")
  ugatit.validate(config)
  return train.Programs(config)


@pytest.fixture(scope="module")
def trained(programs):
  """Three steps of the tiny preset on groups 1, 0, 1 from a state whose AdaILN rhos start at 1 (so an update
  pushes some past 1) -> the host copies of the states before and after each step, and the metrics."""
  config = programs.config
  state = programs.init(programs.init_key)
  state = state.replace(params={**state.params, "g": jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.ones_like(x) if _is_adailn_rho(optim.path_name(path)) else x, state.params["g"])})
  states, metrics = [jax.device_get(state)], []
  for i, group in enumerate((1, 0, 1)):
    state, m = programs.step(state, programs.global_batch(_batch(config, group, seed=i)))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return config, states, metrics


def _is_adailn_rho(path: str) -> bool:
  return path.endswith("rho") and "Ada" in path


def _bottleneck_leaves(params_g) -> dict[str, np.ndarray]:
  pattern = re.compile(rf"({'|'.join(ugatit.GENERATORS)})/({nets.BOTTLENECK_PATTERN})")
  return {optim.path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(params_g)
          if pattern.fullmatch(optim.path_name(p))}


def _changed(before, after) -> tuple[int, int]:
  flags = [not np.array_equal(before[k], after[k]) for k in before]
  return sum(flags), len(flags)


def test_selective_bottleneck_moves_only_on_group_0_steps(trained):
  _, states, _ = trained
  leaves = [_bottleneck_leaves(s.params["g"]) for s in states]
  assert leaves[0], "the bottleneck pattern matches nothing"
  assert _changed(leaves[0], leaves[1])[0] == 0  # group 1
  moved, total = _changed(leaves[1], leaves[2])    # group 0
  assert moved == total
  assert _changed(leaves[2], leaves[3])[0] == 0  # group 1
  # The rest of G moves on every step.
  rest = lambda s: {k: v for k, v in _flat(s.params["g"]).items() if k not in leaves[0]}
  for before, after in zip(states, states[1:]):
    assert _changed(rest(before), rest(after))[0] > 0


def _flat(tree):
  return {optim.path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_held_bottleneck_keeps_its_adam_moments(trained):
  _, states, _ = trained
  opt = [_flat(s.opt_state["g"]) for s in states]
  bottleneck = set(_bottleneck_leaves(states[0].params["g"]))
  held = [k for k in opt[0] if any(k.endswith(b) for b in bottleneck)]
  assert held and all(np.array_equal(opt[0][k], opt[1][k]) for k in held)
  assert any(not np.array_equal(opt[1][k], opt[2][k]) for k in held)


@pytest.mark.parametrize("mode,expected", [("train", True), ("frozen", False)])
def test_bottleneck_train_and_frozen(mode, expected):
  """The update rule alone, on a two-leaf stand-in for each generator: a gradient on every leaf, group 0 and
  group 1 steps; only the bottleneck's leaf is held."""
  config = tiny_config("ugatit", bottleneck=mode)
  net = {"ResnetBlock_0": {"conv_0": {"kernel": jnp.zeros((3,))}}, "conv_in": {"kernel": jnp.zeros((3,))}}
  tx = optim.create(config, "g")
  params = {"a2b": net, "b2a": net}
  state = state_lib.create({"g": params}, {}, {"g": tx})
  grads = jax.tree.map(jnp.ones_like, params)
  for group in (0, 1):
    new = ugatit._bottleneck_update(config, state, tx, grads, jnp.array([group]))
    for name in ugatit.GENERATORS:
      assert np.all(new.params["g"][name]["conv_in"]["kernel"] != 0)
      moved = bool(np.all(new.params["g"][name]["ResnetBlock_0"]["conv_0"]["kernel"] != 0))
      assert moved == expected, (name, group)


def test_rho_is_clipped_to_0_1_after_each_update(trained):
  """AdaILN rhos start at 1 and ILN rhos at 0 here: Adam's first update moves every one with a gradient by ~lr
  up or down, so unclipped some would be above 1 and some below 0."""
  _, states, _ = trained
  flat = _flat(states[1].params["g"])
  ada = np.concatenate([v.ravel() for k, v in flat.items() if _is_adailn_rho(k)])
  iln = np.concatenate([v.ravel() for k, v in flat.items() if k.endswith("rho") and not _is_adailn_rho(k)])
  assert ada.size and iln.size
  assert ada.max() == 1.0 and ada.min() < 1.0 and iln.min() == 0.0 and iln.max() > 0.0


def test_losses_group_terms_and_ada_p(trained):
  config, states, metrics = trained
  for m in metrics:
    assert all(np.isfinite(v) for v in m.values()), m
    assert {"g/adv", "g/cycle", "g/identity", "g/cam", "g/group", "d/gb_group", "d/lb_group", "aug/p",
            "aug/rt"} <= set(m)
    assert "d/ga_group" not in m  # The face side's heads are not trained, as in the original.
  # The face-side heads get no gradient and no update (torch's Adam skips a parameter without a gradient, weight
  # decay included): they stay at their init; the webtoon side's move.
  for name, moves in (("ga", False), ("la", False), ("gb", True), ("lb", True)):
    heads = [_group_head(s.params["d"][name]) for s in states]
    assert _changed(heads[0], heads[-1])[0] == (len(heads[0]) if moves else 0), name
  p = [float(s.extra["aug_p"]) for s in states]
  assert p[0] == p[1] == config.augment.initial_p  # Adjusted every 2 steps, by 2 * 2 / (kimg * 1000) = 0.4.
  assert abs(p[2] - p[1]) == pytest.approx(0.4) and p[3] == p[2]
  assert float(metrics[1]["aug/p"]) == p[2]


def _group_head(d_params) -> dict[str, np.ndarray]:
  return {k: v for k, v in _flat(d_params).items() if k.startswith(ugatit.GROUP_HEAD + "/")}


def test_checkpoint_keeps_p(trained, tmp_path):
  config, states, _ = trained
  rundir.save_state(tmp_path / "run", config, states[2], step=2)
  restored, _ = rundir.restore_state(tmp_path / "run", rundir.load_config(tmp_path / "run"))
  np.testing.assert_array_equal(restored.extra["aug_p"], states[2].extra["aug_p"])


def test_translate_writes_images_and_heatmaps(trained, tmp_path, capsys):
  config, states, _ = trained
  rundir.save_state(tmp_path / "run", config, states[-1], step=3)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  faces = tmp_path / "faces"
  faces.mkdir()
  for i in range(2):
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), np.uint8)).save(faces / f"f{i}.png")
  assert translate.main(["--workdir", str(tmp_path / "run"), "--images", str(faces), "--direction", "a2b",
                         "--heatmap", "--save_raw", "--out", str(tmp_path / "out")]) == 0
  names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
  assert names == ["f0.png", "f0_heatmap.png", "f1.png", "f1_heatmap.png"]
  raw = np.load(tmp_path / "out" / "f0.npy")
  assert raw.shape == (_SIZE, _SIZE, 3) and np.abs(raw).max() <= 1.0
  capsys.readouterr()


def test_translation_progress_scores_each_checkpoint_against_the_same_faces_toon(trained, tmp_path, capsys):
  """benchmarks/translation_progress.py: per checkpoint, the a2b translations of held-out photos against the toon
  of the same synthetic face (by hand here), after the untranslated photos' row."""
  spec = importlib.util.spec_from_file_location("translation_progress",
                                                REPO / "benchmarks" / "translation_progress.py")
  progress = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(progress)
  config, states, _ = trained
  for step in (1, 3):
    rundir.save_state(tmp_path / "run", config, states[step], step=step)
  out = tmp_path / "progress"
  capsys.readouterr()
  assert progress.main(["--workdir", str(tmp_path / "run"), "--num", "3", "--first_index", "500", "--out", str(out),
                        "--json"]) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
  assert [row["step"] for row in rows] == ["photos", "1", "3"]
  unit = lambda image: image.astype(np.float32) / 127.5 - 1
  photos = np.stack([unit(synthetic.render(0, i, _SIZE, "photo")["image"]) for i in range(500, 503)])
  toons = np.stack([unit(synthetic.render(0, i, _SIZE, "toon")["image"]) for i in range(500, 503)])
  assert rows[0]["paired_l1"] == pytest.approx(float(np.abs(photos - toons).mean()), rel=1e-5)
  for row in rows[1:]:
    translated = np.stack([np.load(out / f"step{row['step']}" / f"{i:05d}.npy") for i in range(3)])
    assert row["paired_l1"] == pytest.approx(float(np.abs(translated - toons).mean()), rel=1e-5)
  assert rows[1]["paired_l1"] != rows[2]["paired_l1"]


def test_heatmap_image_is_jet_of_the_normalised_map():
  heatmap = jnp.asarray(np.array([0.0, 1.0, 2.0, 4.0]).reshape(1, 2, 2, 1))
  image = np.asarray(ugatit.heatmap_image(heatmap, (2, 2)))
  assert image.shape == (1, 2, 2, 3)
  np.testing.assert_allclose((image[0, 0, 0] + 1) / 2, [0, 0, 0.5])  # 0: dark blue
  np.testing.assert_allclose((image[0, 1, 1] + 1) / 2, [0.5, 0, 0])  # 1: dark red


@pytest.mark.parametrize("overrides,message", [
    ({"model.n_layers_global": 6}, "needs images of at least 48 px"),
    ({"loss_weights.group": 1.0, "model.num_groups": 0}, "num_groups=4"),
    ({"bottleneck": "sometimes"}, "config.bottleneck 'sometimes'"),
])
def test_bad_settings_are_config_errors(overrides, message):
  config = tiny_config("ugatit", **overrides)
  with pytest.raises(errors.ConfigError, match=message):
    ugatit.validate(config)


def test_selective_without_groups_is_a_config_error():
  config = tiny_config("ugatit", bottleneck="selective", groups=())
  with pytest.raises(errors.ConfigError, match="needs grouped data"):
    ugatit.validate(config)


# --- the family contract (tests/contract.py) ---

CONTRACT_FAMILIES = ("ugatit",)


@pytest.mark.parametrize("name", CONTRACT_FAMILIES)
def test_keeps_the_family_contract(name, tmp_path, programs):
  contract.check(tiny_config(name), tmp_path, programs=programs)
