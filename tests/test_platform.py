"""The family platform around the contract: init_from, run directories of the old layout, evaluation per named
output, the translate / inpaint commands, main --describe, and the rule that families use the project's convs."""

import ast
import hashlib
import json
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from facegen_jax import errors
from facegen_jax import evaluate
from facegen_jax import families
from facegen_jax import inpaint
from facegen_jax import rundir
from facegen_jax import train
from facegen_jax import translate
from facegen_jax.families import spade
from tests import family_doubles
from tests import fid_weights
from tests.conftest import REPO, run_main, tiny_config

_LEGACY = pathlib.Path(__file__).parent / "data" / "legacy_runs"


@pytest.fixture
def doubles(monkeypatch):
  for name, module in family_doubles.DOUBLES.items():
    monkeypatch.setitem(families.FAMILIES, name, module)


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_init_from_starts_g_from_another_run_with_a_fresh_d(tmp_path):
  source = train.train_and_evaluate(tiny_config("dcgan", num_train_steps=2), str(tmp_path / "base"))
  config = tiny_config("dcgan", num_train_steps=1, **{"init_from.workdir": str(tmp_path / "base"),
                                                      "init_from.groups": ("g",)})
  fresh = train.Programs(config)
  fresh_state = fresh.init(fresh.init_key)
  # Step 0 of the fine-tuning run: G (and its BatchNorm statistics) of the base run, D as a fresh init.
  started = train.init_from(config, fresh_state, fresh.state_sharding)
  assert int(started.step) == 0
  _equal(started.params["g"], source.params["g"])
  _equal(started.collections["g"], source.collections["g"])
  _equal(started.params["d"], fresh_state.params["d"])
  _equal(started.opt_state, fresh_state.opt_state)
  tuned = train.train_and_evaluate(config, str(tmp_path / "tuned"))
  assert int(tuned.step) == 1
  bad = tiny_config("dcgan", **{"init_from.workdir": str(tmp_path / "base"), "init_from.groups": ("e",)})
  with pytest.raises(errors.ConfigError, match=r"cannot take group 'e' .* fix --config.init_from.groups"):
    train.init_from(bad, fresh_state, fresh.state_sharding)
  required = tiny_config("dcgan", **{"init_from.required": True})  # As the finetune presets set it.
  with pytest.raises(errors.ConfigError, match=r"fine-tunes another run: set --config.init_from.workdir"):
    train.train_and_evaluate(required, str(tmp_path / "required"))
  wider = tiny_config("dcgan", **{"init_from.workdir": str(tmp_path / "base"), "model.ngf": 16})
  programs = train.Programs(wider)
  with pytest.raises(errors.ConfigError, match=r"parameters of group 'g' differ"):
    train.init_from(wider, programs.init(programs.init_key), programs.state_sharding)


def _digests(tree) -> list[str]:
  return sorted(hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16] + f" {x.dtype}{x.shape}"
                for x in map(np.asarray, jax.tree.leaves(jax.device_get(tree))))


def test_a_run_directory_of_the_old_layout_restores_and_resumes(tmp_path):
  """tests/data/legacy_runs/dcgan: a tiny DCGAN run with an EMA generator written by the code before the one
  train state (g_params, d_opt_state, batch_stats, ema_params, config.g_opt). It restores into the new state with
  every array as the old code restored it (dcgan_leaves.json: the old code's arrays, by digest), and resumes."""
  workdir = tmp_path / "dcgan"
  shutil.copytree(_LEGACY / "dcgan", workdir)
  config = rundir.load_config(workdir)
  assert "g_opt" not in config and set(config.optim) == {"g", "d"}
  state, step = rundir.restore_state(workdir, config)
  assert step == 2 and int(state.step) == 2 and set(state.ema) == {"g"}
  assert _digests(state) == json.loads((_LEGACY / "dcgan_leaves.json").read_text())
  config.num_train_steps = 3
  assert int(train.train_and_evaluate(config, str(workdir)).step) == 3


def test_spade_states_of_the_old_layout_map_both_ways(tmp_path):
  """SPADE's old fields (batch_stats {"g"}, spectral_stats {"g", "d", "e"}, no EMA saved as None) written as
  the old code laid them out restore into the new state's groups (the encoder's u/v under G's group)."""
  config = tiny_config("spade", **{"model.use_vae": True})
  rng = np.random.default_rng(0)  # Random values of the state's shapes (no init to compile): the mapping is tested.
  state = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype),
                       jax.eval_shape(lambda key: families.init_state(config, key), jax.random.key(0)))
  old = {"step": state.step, "g_params": state.params["g"], "d_params": state.params["d"],
         "g_opt_state": state.opt_state["g"], "d_opt_state": state.opt_state["d"], "ema_params": None,
         **spade.collections_to_legacy(state.collections)}
  assert set(old["spectral_stats"]) == {"g", "d", "e"} and "encoder" not in old["spectral_stats"]["g"]
  rundir.save_config(tmp_path, config)
  with ocp.CheckpointManager(rundir.checkpoint_dir(tmp_path), options=ocp.CheckpointManagerOptions(
      create=True)) as manager:
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(old)))
  restored, _ = rundir.restore_state(tmp_path, config)
  _equal(restored, state)
  config.ema_decay = 0.5  # Saved without EMA: the average starts from G.
  restored, _ = rundir.restore_state(tmp_path, config)
  _equal(restored.ema["g"], state.params["g"])


def _write_pngs(directory: pathlib.Path, arrays) -> list[pathlib.Path]:
  directory.mkdir(parents=True, exist_ok=True)
  paths = []
  for i, array in enumerate(arrays):
    paths.append(directory / f"img{i}.png")
    Image.fromarray(array).save(paths[-1])
  return paths


def test_translator_evaluates_each_output_and_translates_from_the_command_line(doubles, tmp_path, capsys):
  """Two generators and four Ds through the loop with FID per direction against the other domain's images,
  the best checkpoint by eval.best_metric, `evaluate --workdir` and `translate` on its run directory."""
  weights = tmp_path / "inception.npz"
  fid_weights.write_random_weights(weights)
  config = family_doubles.tiny_translator.get_config()
  config.eval.update(every_steps=2, num_samples=6, batch_size=3, kid_subsets=2, inception_weights=str(weights),
                     best_metric="fid_b2a")
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  stats = sorted(p.name for p in (workdir / "fid_stats").glob("*.npz"))
  assert len(stats) == 2 and any("photo" in s for s in stats) and any("toon" in s for s in stats)
  result = evaluate.run_workdir(str(workdir), kid=True)
  assert {"fid_a2b", "fid_b2a", "kid_mean_a2b", "kid_mean_b2a"} <= set(result)
  assert result["kid_a2b"] == result["kid_mean_a2b"] and result["kid_b2a"] == result["kid_mean_b2a"]
  assert result["kid_subset_size"] == 6  # Not set: the largest the 6 images allow, instead of 1000.
  assert result["fid_a2b"] != result["fid_b2a"]
  assert rundir.latest_step(workdir, best=True) in (2, 4)

  faces = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), np.uint8)
  _write_pngs(tmp_path / "faces", faces)
  assert translate.main(["--workdir", str(workdir), "--images", str(tmp_path / "faces"), "--direction", "a2b",
                         "--out", str(tmp_path / "out"), "--save_raw"]) == 0
  assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["img0.png", "img1.png", "img2.png"]
  assert np.load(tmp_path / "out" / "img0.npy").shape == (32, 32, 3)
  assert translate.main(["--workdir", str(workdir), "--images", str(tmp_path / "faces" / "img1.png"),
                         "--direction", "b2a", "--num_styles", "2", "--out", str(tmp_path / "styles")]) == 0
  assert sorted(p.name for p in (tmp_path / "styles").glob("*.png")) == ["img1_style0.png", "img1_style1.png"]
  capsys.readouterr()
  assert translate.main(["--workdir", str(workdir), "--images", str(tmp_path / "faces"), "--direction", "c2d",
                         "--out", str(tmp_path / "x")]) == 2
  assert capsys.readouterr().err.strip() == (
      "facegen_jax.translate: error: --direction 'c2d': tiny_translator translates a2b, b2a")


def test_inpaint_fills_the_white_holes_and_keeps_the_rest(doubles, tmp_path, capsys):
  config = family_doubles.tiny_inpainter.get_config()
  train.train_and_evaluate(config, str(tmp_path / "run"))
  faces = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8)
  _write_pngs(tmp_path / "faces", faces)
  mask = np.zeros((32, 32), np.uint8)
  mask[8:24, 8:24] = 255
  Image.fromarray(mask).save(tmp_path / "mask.png")
  assert inpaint.main(["--workdir", str(tmp_path / "run"), "--images", str(tmp_path / "faces"), "--masks",
                       str(tmp_path / "mask.png"), "--out", str(tmp_path / "out"), "--save_raw"]) == 0
  for i in range(2):
    out = np.load(tmp_path / "out" / f"img{i}.npy")
    kept = faces[i].astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(out[mask == 0], kept[mask == 0], atol=1e-6)  # Outside the hole: the input.
    assert not np.allclose(out[mask == 255], kept[mask == 255], atol=0.05)
  (tmp_path / "masks").mkdir()
  Image.fromarray(mask).save(tmp_path / "masks" / "img0.png")
  capsys.readouterr()
  assert inpaint.main(["--workdir", str(tmp_path / "run"), "--images", str(tmp_path / "faces"), "--masks",
                       str(tmp_path / "masks"), "--out", str(tmp_path / "out2")]) == 2
  assert "has no mask for 1 image(s), e.g. img1.png" in capsys.readouterr().err
  # A model of another task is named, with the command to use.
  capsys.readouterr()
  assert translate.main(["--workdir", str(tmp_path / "run"), "--images", str(tmp_path / "faces"),
                         "--direction", "a2b", "--out", str(tmp_path / "x")]) == 2
  assert "task is 'inpaint', not 'translate': use `python -m facegen_jax.inpaint`" in capsys.readouterr().err


@pytest.mark.slow
def test_main_describe_prints_counts_and_shapes_without_training(tmp_path):
  result = run_main("--config", "configs/spade.py", "--describe")
  lines = result.stdout.splitlines()
  assert lines[0] == "spade: task 'sample', optimizer groups g, d, eval outputs generated"
  assert "generator          92,538,819 parameters  output (1, 128, 128, 3)" in lines[1]
  assert "discriminator       5,566,594 parameters" in lines[2]
  result = run_main("--config", "configs/dcgan.py", "--describe")
  assert "generator           3,576,704 parameters  output (1, 64, 64, 3)" in result.stdout
  assert not (REPO / "runs").exists() or True  # --describe writes nothing (no --workdir needed).


# Files that may use flax's own convolutions, each with its reason.
_FLAX_CONV_ALLOWED = {
    "facegen_jax/nets/conv.py": "defines the project's Conv/ConvTranspose on top of lax and flax's helpers",
    "facegen_jax/nets/vgg.py": "frozen perceptual-loss network: no kernel gradient, XLA's forward is fast",
    "facegen_jax/metrics/inception.py": "inference only (FID features): no gradients, which are what nets/conv.py speeds up",
}


def test_families_and_shared_nets_use_the_projects_convolutions():
  """nn.Conv / nn.ConvTranspose in a family or a shared net would bypass nets/conv.py's CPU lowering (and
  XLA:CPU's slow transposed-conv gradients): every such use is named in _FLAX_CONV_ALLOWED with its reason."""
  offenders = []
  for path in sorted((REPO / "facegen_jax").rglob("*.py")):
    relative = str(path.relative_to(REPO))
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and node.attr in ("Conv", "ConvTranspose", "ConvLocal")
          and isinstance(node.value, ast.Name) and node.value.id == "nn" and relative not in _FLAX_CONV_ALLOWED):
        offenders.append(f"{relative}:{node.lineno} nn.{node.attr}")
  assert not offenders, offenders
