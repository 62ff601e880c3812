"""configs/tfill.py:personal end to end at tiny widths: a base run written with the run-directory helpers (random
parameters of init's shapes, no init to compile), two fine-tuning steps on a folder of one synthetic person with its
held-out split, evaluation (FID with random Inception weights, the hole metrics) and the best checkpoint."""

import jax
import numpy as np
from PIL import Image

from configs import tfill as tfill_configs
from facegen_jax import families
from facegen_jax import rundir
from facegen_jax import train
from facegen_jax.metrics import evaluator as evaluator_lib
from facegen_jax.metrics import fid
from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import synthetic
from tests import fid_weights
from tests.conftest import tensorboard_scalars


def _base_run(workdir) -> dict:
  """A tiny coarse run at step 4 with random parameters (scaled small, so every forward stays finite)."""
  config = tfill_configs.get_config("tiny")
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda key: families.init_state(config, key), jax.random.key(0))
  state = jax.tree.map(lambda a: (0.05 * rng.standard_normal(a.shape)).astype(a.dtype)
                       if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape, a.dtype), shapes)
  rundir.save_state(workdir, config, state, step=4)
  return state.params


def test_personal_preset_fine_tunes_a_base_run_on_the_folder_and_keeps_the_best(tmp_path):
  base = _base_run(tmp_path / "base")
  folder = tmp_path / "me"
  folder.mkdir()
  for i in range(12):  # one identity, twelve views
    Image.fromarray(synthetic.render(7, i, 32, num_identities=1)["image"]).save(folder / f"{i:04d}.png")
  weights = tmp_path / "inception.npz"
  fid_weights.write_random_weights(weights)
  config = tfill_configs.tiny(tfill_configs.get_config("personal"))
  config.init_from.workdir = str(tmp_path / "base")
  config.input.folder.image_dir = str(folder)
  config.input.folder.heldout = 3
  config.eval.inception_weights = str(weights)
  config.num_train_steps, config.eval.every_steps = 2, 2
  state = train.train_and_evaluate(config, str(tmp_path / "tuned"))

  # Every group started from the base: two Adam steps (G 1e-4, D 4e-4) move a parameter by about 2 lr at most,
  # while the base's values are 0.05-scale draws a fresh init would not repeat; the frozen LPIPS group is the base's.
  assert set(state.params) == set(base) == {"g", "d", "lpips"}
  for group, bound in (("g", 1e-3), ("d", 4e-3), ("lpips", 0.0)):
    gaps = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), state.params[group],
                        base[group])
    assert max(jax.tree.leaves(gaps)) <= bound, group
  assert any(g > 0 for g in jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), state.params["g"], base["g"])))

  # The held-out split: training's source has the 9 other photos, the reference statistics are those 3 photos'.
  held = sources.heldout_split([f"{i:04d}" for i in range(12)], 3)["heldout"]
  read = pipeline.create_sources(config.input)[""].source.files
  assert len(read) == 9 and not {str(folder / f"{k}.png") for k in held} & set(read)
  digest = evaluator_lib._file_digest(str(weights))  # pylint: disable=protected-access
  stats = tmp_path / "tuned" / evaluator_lib.STATS_DIR / evaluator_lib.stats_file_name(
      evaluator_lib.reference_input_config(config), 3, digest)
  assert fid.Statistics.load(stats).count == 3

  # Evaluated at the last step by FID, with the hole metrics beside it; the best checkpoint kept by FID.
  scalars = tensorboard_scalars(tmp_path / "tuned" / "tensorboard")
  assert config.eval.best_metric == "fid" and list(scalars["eval/fid"]) == [2]
  assert all(np.isfinite(scalars[f"eval/{name}"][2]) for name in ("fid", "hole_l1", "psnr", "ssim", "lpips"))
  assert scalars["eval/best_fid"][2] == scalars["eval/fid"][2]
  assert rundir.latest_step(tmp_path / "tuned", best=True) == 2
