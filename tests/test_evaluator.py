"""FID/KID during training and from `evaluate --workdir`: what is logged, the best checkpoint, the reference
statistics cache, how each process reads its share, and the errors for settings that cannot work.

Random Inception weights throughout (the network's numbers against pytorch-fid are test_fid's business).
"""

import subprocess
import sys

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp
import pytest

from facegen_jax import errors
from facegen_jax import evaluate
from facegen_jax import generate
from facegen_jax import rundir
from facegen_jax import train
from facegen_jax.metrics import evaluator as evaluator_lib
from facegen_jax.metrics import fid
from tests import fid_weights
from tests.conftest import REPO, device_env
from tests.conftest import tensorboard_scalars
from tests.conftest import tiny_config

_EVAL = {"eval.every_steps": 2, "eval.num_samples": 10, "eval.batch_size": 4, "eval.kid_subsets": 3,
         "eval.kid_subset_size": 5}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("inception") / "inception.npz"
  fid_weights.write_random_weights(path)
  return str(path)


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory, weights):
  """A tiny DCGAN run evaluated at steps 2 and 4 (G at a high learning rate, so the two FIDs differ)."""
  workdir = tmp_path_factory.mktemp("dcgan_eval") / "run"
  config = tiny_config("dcgan", **_EVAL, **{"eval.inception_weights": weights, "optim.g.lr": 5e-3})
  train.train_and_evaluate(config, str(workdir))
  return workdir


def test_training_logs_fid_kid_and_keeps_the_best_checkpoint(dcgan_run):
  scalars = tensorboard_scalars(dcgan_run / "tensorboard")
  fids = scalars["eval/fid"]
  assert sorted(fids) == [2, 4] and all(np.isfinite(v) and v > 0 for v in fids.values())
  assert fids[2] != fids[4]
  assert sorted(scalars["eval/kid_mean"]) == [2, 4] and all(v >= 0 for v in scalars["eval/kid_std"].values())
  best_step = min(fids, key=fids.get)
  assert scalars["eval/best_fid"][4] == pytest.approx(min(fids.values()), rel=1e-6)
  assert [p.name for p in (dcgan_run / rundir.BEST_DIR).iterdir() if p.name.isdigit()] == [str(best_step)]
  stats = list((dcgan_run / evaluator_lib.STATS_DIR).glob("*.npz"))
  assert len(stats) == 1 and fid.Statistics.load(stats[0]).count == 10


def test_evaluate_command_reproduces_the_logged_numbers(dcgan_run):
  logged = tensorboard_scalars(dcgan_run / "tensorboard")
  latest = evaluate.run_workdir(str(dcgan_run))
  assert latest["step"] == 4
  assert latest["fid"] == pytest.approx(logged["eval/fid"][4], rel=1e-5)
  assert latest["kid_mean"] == pytest.approx(logged["eval/kid_mean"][4], rel=1e-4)
  best = evaluate.run_workdir(str(dcgan_run), best=True)
  assert best["fid"] == pytest.approx(logged["eval/best_fid"][4], rel=1e-5)
  assert best["step"] == min(logged["eval/fid"], key=logged["eval/fid"].get)
  earlier = evaluate.run_workdir(str(dcgan_run), step=2, kid=False)
  assert earlier["fid"] == pytest.approx(logged["eval/fid"][2], rel=1e-5) and "kid_mean" not in earlier


def test_reference_statistics_are_read_from_the_cache(dcgan_run, tmp_path):
  (cached,) = (dcgan_run / evaluator_lib.STATS_DIR).glob("*.npz")
  before = evaluate.run_workdir(str(dcgan_run), stats_dir=str(cached.parent), kid=False)["fid"]
  stats = fid.Statistics.load(cached)
  shifted = tmp_path / "stats"
  shifted.mkdir()
  fid.Statistics(stats.mu + 1.0, stats.sigma, stats.count, stats.features).save(shifted / cached.name)
  after = evaluate.run_workdir(str(dcgan_run), stats_dir=str(shifted), kid=False)["fid"]
  # ||mu_r + 1 - mu_g||^2 - ||mu_r - mu_g||^2 = 2 sum(mu_r - mu_g) + d: only the cached file can have moved it.
  assert after - before == pytest.approx(2 * np.sum(stats.mu - _generated_mean(dcgan_run)) + stats.mu.size, rel=1e-3)
  # Another count is another file: computed and cached beside the first.
  evaluate.run_workdir(str(dcgan_run), stats_dir=str(shifted), num_real=8, num_samples=8, kid=False)
  assert len(list(shifted.glob("*.npz"))) == 2


def _generated_mean(workdir) -> np.ndarray:
  """Mean of the generated features at the latest step, as the evaluator computes them."""
  config = rundir.load_config(workdir)
  mesh = fid.create_mesh()
  state, _ = rundir.restore_state(workdir, config, sharding=NamedSharding(mesh, P()))
  evaluator = evaluator_lib.Evaluator(config, mesh, stats_dir=workdir / evaluator_lib.STATS_DIR)
  return np.mean(evaluator.generated_features(state).astype(np.float64), axis=0)


def test_stats_file_name_tracks_dataset_split_resolution_count_and_weights():
  config = tiny_config("spade")
  base = evaluator_lib.stats_file_name(config.input, 100, "ab" * 32)
  assert base == evaluator_lib.stats_file_name(config.input, 100, "ab" * 32)
  changed = []
  for key, value in (("resolution", 16), ("synthetic.seed", 1), ("synthetic.num_examples", 65),
                     ("synthetic.group_counts", (10, 5, 3, 2))):
    other = tiny_config("spade", **{f"input.{key}": value})
    changed.append(evaluator_lib.stats_file_name(other.input, 100, "ab" * 32))
  changed.append(evaluator_lib.stats_file_name(config.input, 99, "ab" * 32))
  changed.append(evaluator_lib.stats_file_name(config.input, 100, "cd" * 32))
  tfds = tiny_config("spade", **{"input.source": "tfds", "input.tfds.name": "celebamask_hq/128"})
  train_name = evaluator_lib.stats_file_name(tfds.input, 100, "ab" * 32)
  tfds.eval.split = "test"
  test_name = evaluator_lib.stats_file_name(evaluator_lib.reference_input_config(tfds), 100, "ab" * 32)
  assert "train" in train_name and "test" in test_name and "/" not in test_name
  assert len({base, train_name, test_name, *changed}) == len(changed) + 3
  # Panel sequences' target faces differ from faces of the same source, and with their panel settings.
  names = set()
  for overrides in ({}, {"input.record": "panels"}, {"input.record": "panels", "input.panels.panel_size": 96},
                    {"input.record": "panels", "input.panels.torchvision_resize": True}):
    names.add(evaluator_lib.stats_file_name(tiny_config("dcgan", **overrides).input, 100, "ab" * 32))
  assert len(names) == 4


def test_each_process_reads_its_share_of_every_batch(monkeypatch, weights, tmp_path):
  """Two processes' rows of each global batch, stacked, are the one-process batch: records in source order,
  zero rows after the last record."""
  config = tiny_config("spade", **_EVAL, **{"eval.inception_weights": weights})
  mesh = fid.create_mesh()
  evaluator = evaluator_lib.Evaluator(config, mesh, stats_dir=tmp_path)
  single = list(evaluator._local_batches(10, ("image", "label"), real=True))
  assert [(b, valid) for b, valid, _ in single] == [(0, 4), (1, 4), (2, 2)]
  shares = []
  for process in (0, 1):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda process=process: process)
    shares.append(list(evaluator._local_batches(10, ("image", "label"), real=True)))
  monkeypatch.undo()
  source = evaluator._sources[""]
  for b, (_, _, whole) in enumerate(single):
    for key in ("image", "label"):
      stacked = np.concatenate([shares[0][b][2][key], shares[1][b][2][key]])
      np.testing.assert_array_equal(stacked, whole[key])
  np.testing.assert_array_equal(single[0][2]["label"][1], source[1]["label"])
  assert not single[2][2]["image"][2:].any()


def test_settings_that_cannot_work_fail_before_training(weights, tmp_path):
  cases = [({"eval.kid_subset_size": 11}, "--config.eval.kid_subset_size to at most 10"),
           ({"eval.inception_weights": None}, "--config.eval.inception_weights is not set.*every_steps=0"),
           ({"eval.inception_weights": str(tmp_path / "none.npz")}, "none.npz not found"),
           ({"eval.num_samples": 1}, "at least 2 images"),
           ({"eval.every_steps": -1}, "every_steps must be >= 0")]
  for overrides, message in cases:
    config = tiny_config("dcgan", **{**_EVAL, "eval.inception_weights": weights, **overrides})
    with pytest.raises(errors.ConfigError, match=message):
      train.validate_config(config)
  config = tiny_config("spade", **{**_EVAL, "eval.inception_weights": weights, "eval.num_samples": 65,
                                   "eval.kid": False})
  with pytest.raises(errors.ConfigError, match="has 64 examples, fewer than the 65 real images"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.slow
def test_evaluate_command_errors(dcgan_run, tmp_path):
  with pytest.raises(errors.ConfigError, match="--kid_subset_size to at most 10"):
    evaluate.run_workdir(str(dcgan_run), kid_subset_size=11)
  with pytest.raises(errors.UserError, match="no checkpoint for step 3"):
    evaluate.run_workdir(str(dcgan_run), step=3)
  (tmp_path / "fresh").mkdir()
  rundir.save_config(tmp_path / "fresh", rundir.load_config(dcgan_run))
  with pytest.raises(errors.UserError, match="no best checkpoint"):
    evaluate.run_workdir(str(tmp_path / "fresh"), best=True)
  result = subprocess.run([sys.executable, "-m", "facegen_jax.evaluate", "--workdir", str(dcgan_run),
                           "--real", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "give one or the other" in result.stderr


@pytest.mark.slow
def test_evaluate_command_line_on_eight_devices_matches_one(dcgan_run):
  """The CLI over 8 simulated devices (batch split 8 ways) gives the numbers of the in-process 1-device run."""
  one = evaluate.run_workdir(str(dcgan_run), batch_size=8)
  env = device_env(8)
  result = subprocess.run([sys.executable, "-m", "facegen_jax.evaluate", "--workdir", str(dcgan_run),
                           "--batch_size", "8"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
  assert float(lines["FID"]) == pytest.approx(one["fid"], rel=1e-4)
  assert float(lines["KID"].split()[0]) == pytest.approx(one["kid_mean"], rel=1e-3, abs=1e-6)


def test_best_checkpoint_survives_a_restart(dcgan_run, tmp_path):
  """A resumed run keeps comparing against the best FID saved before it stopped."""
  manager = ocp.CheckpointManager(rundir.best_checkpoint_dir(dcgan_run))
  step = manager.latest_step()
  best = train._BestCheckpoint(dcgan_run, "fid")
  assert best.best() == (step, pytest.approx(manager.metrics(step)["fid"]))
  best.offer(step + 100, best.best()[1] + 1.0, None)  # worse: not saved (a None state would fail to save)
  assert best.best()[0] == step
  best.close()


def test_generate_from_the_best_checkpoint(dcgan_run, tmp_path):
  fids = tensorboard_scalars(dcgan_run / "tensorboard")["eval/fid"]
  best_step, other_step = sorted(fids, key=fids.get)
  outputs = {}
  for name, options in (("best", {"best": True}), ("at_best", {"step": best_step}), ("other", {"step": other_step})):
    generate.run(str(dcgan_run), str(tmp_path / name), num=3, save_raw=True, **options)
    outputs[name] = np.stack([np.load(p) for p in sorted((tmp_path / name).glob("*.npy"))])
  np.testing.assert_array_equal(outputs["best"], outputs["at_best"])
  assert not np.array_equal(outputs["best"], outputs["other"])


def test_evaluate_identity_cosine_of_same_stem_pairs(tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from facegen_jax import npz  # pylint: disable=g-import-not-at-top
  from facegen_jax.nets import sphereface  # pylint: disable=g-import-not-at-top
  params = sphereface.Sphere20a(3, (4, 4, 4, 4), 8).init(jax.random.key(0), jnp.zeros((1, 112, 96, 3)))["params"]
  npz.write(tmp_path / "sphere.npz", {f"{layer}/{leaf}": np.asarray(value) for layer, leaves in params.items()
                                      for leaf, value in leaves.items()})
  rng = np.random.default_rng(0)
  real, fake = tmp_path / "real", tmp_path / "fake"
  real.mkdir(), fake.mkdir()
  images = {}
  for name, folder, size in (("x", real, (40, 40)), ("y", real, (224, 192)), ("z", real, (40, 40)),
                             ("x", fake, (40, 40)), ("y_style0", fake, (112, 96)), ("w", fake, (40, 40))):
    images[folder.name, name] = rng.integers(0, 256, (*size, 3), np.uint8)
    Image.fromarray(images[folder.name, name]).save(folder / f"{name}.png")

  def sphere_input(image):  # what the command feeds sphere20a: [-1, 1] at 112x96
    x = jnp.asarray(image, jnp.float32)[None] / 127.5 - 1
    if x.shape[1] == 224:
      x = evaluate.avg_pool_exclude_pad(x)
    return jax.image.resize(x, (1, 112, 96, 3), "linear") if x.shape[1] != 112 else x

  fc5 = {k: v for k, v in params.items() if k != "fc6"}
  want = np.mean([float(sphereface.identity_cosine(fc5, sphere_input(images["fake", f]),
                                                   sphere_input(images["real", r]))[0])
                  for r, f in (("x", "x"), ("y", "y_style0"))])  # w and z have no partner
  assert evaluate.main(["--real", str(real), "--fake", str(fake), "--identity", str(tmp_path / "sphere.npz")]) == 0
  out = capsys.readouterr().out
  assert "2 same-stem pairs" in out and "FID" not in out
  assert abs(float(out.split(":")[-1]) - want) < 1e-5, (out, want)

  empty = tmp_path / "none"
  empty.mkdir()
  Image.fromarray(images["fake", "w"]).save(empty / "q.png")
  assert evaluate.main(["--real", str(real), "--fake", str(empty), "--identity", str(tmp_path / "sphere.npz")]) != 0
  assert "has the stem of an image of --real" in capsys.readouterr().err
  assert evaluate.main(["--workdir", str(tmp_path), "--identity", str(tmp_path / "sphere.npz")]) != 0
  assert "--identity compares the images of two folders" in capsys.readouterr().err
