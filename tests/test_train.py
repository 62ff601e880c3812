"""The training loop: outputs on disk, resume equality, sharding equality, preemption, non-finite losses."""

import json
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from facegen_jax import errors
from facegen_jax import families
from facegen_jax import state as state_lib
from facegen_jax import train
from facegen_jax.families import dcgan
from tests.conftest import REPO, device_env, run_main, tiny_config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def _assert_trees_equal(a, b, **tolerance):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    if tolerance:
      np.testing.assert_allclose(x, y, **tolerance)
    else:
      np.testing.assert_array_equal(x, y)


def _event_tags(logdir: pathlib.Path) -> set[str]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in logdir.rglob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      tags.update(value.tag for value in event.summary.value)
  return tags


def test_run_writes_tensorboard_samples_and_checkpoints(workdir):
  config = tiny_config("dcgan")
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == config.num_train_steps
  tags = _event_tags(workdir / "tensorboard")
  assert {"d/loss", "g/loss", "samples", "perf/images_per_sec"} <= tags, tags
  assert sorted(p.name for p in (workdir / "samples").glob("*.png")) == ["step_00000004.png"]
  steps = ocp.CheckpointManager((workdir / "checkpoints").resolve()).all_steps()
  assert sorted(steps) == [2, 4]


@pytest.mark.parametrize("first_step, num_steps", [(2, 1), (3, 5)])  # ends inside the run; open at its end
def test_profile_trace_and_memory_scalars(tmp_path, first_step, num_steps):
  config = tiny_config("dcgan", **{"profile.first_step": first_step, "profile.num_steps": num_steps})
  train.train_and_evaluate(config, str(tmp_path))
  traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  assert {"perf/host_peak_rss_gib", "steps_per_sec", "perf/images_per_sec"} <= _event_tags(tmp_path / "tensorboard")
  train.train_and_evaluate(tiny_config("dcgan", num_train_steps=6), str(tmp_path))  # no trace left open


class _Crash(Exception):
  pass


_TO_GLOBAL = train.Programs.global_batch


def _recording_batches(monkeypatch, record, crash_at=None):
  original = _TO_GLOBAL

  def wrapped(programs, batch):
    if crash_at is not None and len(record) + 1 == crash_at:
      raise _Crash()
    record.append(np.asarray(batch["image"]).tobytes().__hash__())
    return original(programs, batch)
  monkeypatch.setattr(train.Programs, "global_batch", wrapped)


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_crash_and_resume_is_bit_identical(tmp_path, monkeypatch, ema_decay):
  config = tiny_config("dcgan", num_train_steps=6, ema_decay=ema_decay)
  uninterrupted_batches, resumed_batches = [], []
  _recording_batches(monkeypatch, uninterrupted_batches)
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / "a"))

  _recording_batches(monkeypatch, resumed_batches, crash_at=5)
  with pytest.raises(_Crash):
    train.train_and_evaluate(config, str(tmp_path / "b"))  # Checkpoints at 2 and 4, dies fetching step 5.
  assert resumed_batches == uninterrupted_batches[:4]
  after_crash = []
  _recording_batches(monkeypatch, after_crash)
  resumed = train.train_and_evaluate(config, str(tmp_path / "b"))
  assert after_crash == uninterrupted_batches[4:]  # Same data order after the restart.
  _assert_trees_equal(uninterrupted, resumed)


def test_ema_generator_is_the_moving_average_of_g(tmp_path):
  config = tiny_config("dcgan", ema_decay=0.75)
  key = jax.random.key(0)
  state = families.init_state(config, key)
  _assert_trees_equal(state.ema.get("g"), state.params["g"])
  assert families.init_state(tiny_config("dcgan"), key).ema.get("g") is None
  assert jax.eval_shape(lambda k: families.init_state(tiny_config("spade", ema_decay=0.5), k), key).ema.get("g")
  step = jax.jit(train._guarded_step(families.get_family("dcgan"), config, key))
  batch = {"image": jax.random.uniform(jax.random.key(1), (8, 32, 32, 3), minval=-1, maxval=1)}
  expected = state.params["g"]
  for _ in range(3):
    state, _ = step(state, batch)
    expected = jax.tree.map(lambda e, g: 0.75 * e + 0.25 * g, expected, state.params["g"])
    _assert_trees_equal(state.ema.get("g"), expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(jax.tree.leaves(state.ema.get("g"))[0], jax.tree.leaves(state.params["g"])[0])
  # Samples, evaluation and `generate` all take G from state.inference_state.
  assert state_lib.inference_state(state).params["g"] is state.ema.get("g")
  # A run saved without EMA resumes with it, the average starting from G.
  train.train_and_evaluate(tiny_config("dcgan", num_train_steps=2), str(tmp_path))
  resumed = train.train_and_evaluate(tiny_config("dcgan", num_train_steps=4, ema_decay=0.75), str(tmp_path))
  assert resumed.ema.get("g") is not None and int(resumed.step) == 4


def _final_params(workdir: pathlib.Path):
  manager = ocp.CheckpointManager(workdir.resolve() / "checkpoints")
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return manager.latest_step(), restored.state


_TINY = ["--config", "configs/dcgan.py:tiny"]
# A run with EMA, random crops and flips, so a restart must restore parameters, optimizer, EMA, the data position
# and the augmentation draws to end where the uninterrupted run does. Checkpoint and log intervals do not change
# the result: the preemption tests below compare their restarted runs with one uninterrupted run of these flags.
_PREEMPTED = [*_TINY, "--config.num_train_steps=200", "--config.sample_every_steps=1000", "--config.ema_decay=0.9",
              "--config.input.load_size=40", "--config.input.random_crop=True", "--config.input.random_flip=True"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  run_main(*_PREEMPTED, "--config.checkpoint_every_steps=1000", "--workdir", str(workdir))
  return _final_params(workdir)


@pytest.mark.slow
def test_sigkill_and_restart_gives_the_uninterrupted_result(tmp_path, uninterrupted):
  flags = [*_PREEMPTED, "--config.checkpoint_every_steps=5", "--config.log_every_steps=50"]
  workdir = tmp_path / "b"
  process = subprocess.Popen([sys.executable, "-m", "facegen_jax.main", *flags, "--workdir", str(workdir)],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not list((workdir / "checkpoints").glob("1[0-9]")) and time.time() < deadline:
    assert process.poll() is None, "the run ended before it could be killed"
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at, _ = _final_params(workdir)
  assert killed_at < 200
  run_main(*flags, "--workdir", str(workdir))
  step_a, state_a = uninterrupted
  step_b, state_b = _final_params(workdir)
  assert step_a == step_b == 200
  _assert_trees_equal(state_a, state_b)


@pytest.mark.slow
def test_sigterm_at_a_random_step_saves_exits_zero_and_resumes_bit_identically(tmp_path, uninterrupted):
  """SIGTERM at a random moment: it checkpoints the step it is at and exits 0, and the restart ends where the
  uninterrupted run does."""
  flags = [*_PREEMPTED, "--config.checkpoint_every_steps=1000", "--config.log_every_steps=10"]
  workdir = tmp_path / "b"
  process = subprocess.Popen([sys.executable, "-m", "facegen_jax.main", *flags, "--workdir", str(workdir)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 300
    lines = []
    for line in process.stdout:
      lines.append(line)
      if "steps/s" in line or time.time() > deadline:  # The first progress report: training is under way.
        break
    delay = random.Random().uniform(0.0, 4.0)
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
  finally:
    process.kill()
  assert process.returncode == 0, "".join(lines) + output
  stopped_at, _ = _final_params(workdir)
  assert 10 <= stopped_at < 200, f"SIGTERM {delay:.2f} s after step 10 landed at step {stopped_at}"
  run_main(*flags, "--workdir", str(workdir))
  step_a, state_a = uninterrupted
  step_b, state_b = _final_params(workdir)
  assert step_a == step_b == 200
  _assert_trees_equal(state_a, state_b)


_DUMP = """
import json, sys, numpy as np, jax
from tests.conftest import tiny_config
from facegen_jax import train
config = tiny_config(sys.argv[4], batch_size=8, num_train_steps=int(sys.argv[6]), **json.loads(sys.argv[5]))
state = train.train_and_evaluate(config, sys.argv[1])
assert jax.device_count() == int(sys.argv[3]), jax.devices()
leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state))
np.savez(sys.argv[2], **{jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})
"""


# Two things make a 1-device and an 8-device SPADE run differ by more than rounding, neither of them sharding:
# at crop 32 the generator's first block works at 1x1 on the label map's corner pixel, background in every face,
# so its batch norm normalises a zero-variance input (pure rounding noise, amplified 300x); and Adam's first
# update is lr * sign(gradient), so a gradient that is 0 in exact arithmetic (a bias before a batch norm) moves
# by +-lr on rounding alone. At crop 64 and with a large eps (updates proportional to the gradient) the
# comparison sees the computation, i.e. that the batch norm statistics are the global batch's.
_SPADE_WELL_CONDITIONED = {"model.crop_size": 64, "input.resolution": 64, "optim.g.eps": 1.0, "optim.d.eps": 1.0,
                           "optim.g.lr": 1e-2, "optim.d.lr": 1e-2}


def _assert_close_elementwise(a, b, name):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def _assert_close_in_norm(a, b, name):
  """Per tensor, |a - b| <= 1e-3 |a| (+ 1e-5 per element): one SPADE step differs by rounding (measured: at most
  0.042 of the bound), while per-device (not global) batch statistics at one example per device would differ by
  O(1). A second step is not compared: it amplifies the first step's rounding past the bound on some machines
  and not others, for the same code (here D's Adam moments 2.5 % apart after two steps, 25x the bound, on CI
  within it; likely D's hinge, where a patch that rounding puts across the margin moves D's gradient by a whole
  patch's share)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff, bound = np.linalg.norm(a - b), 1e-3 * np.linalg.norm(a) + 1e-5 * np.sqrt(a.size)
  assert diff <= bound, f"{name}: |a - b| = {diff:.3g} > {bound:.3g} (|a| = {np.linalg.norm(a):.3g})"


@pytest.mark.parametrize("family, overrides, steps, assert_close", [
    ("dcgan", {}, 3, _assert_close_elementwise), ("spade", _SPADE_WELL_CONDITIONED, 1, _assert_close_in_norm)])
@pytest.mark.slow
def test_eight_devices_match_one(tmp_path, family, overrides, steps, assert_close):
  dumps = {}
  for devices in (1, 8):
    env = device_env(devices)
    out = tmp_path / f"{devices}.npz"
    subprocess.run([sys.executable, "-c", _DUMP, str(tmp_path / f"run{devices}"), str(out), str(devices), family,
                    json.dumps(overrides), str(steps)],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    dumps[devices] = np.load(out)
  assert len(dumps[1].files) == len(dumps[8].files)
  for name in dumps[1].files:
    assert_close(dumps[1][name], dumps[8][name], name)


def _nan_at_step_3(config, state, batch, rng):
  state, metrics = dcgan.train_step(config, state, batch, rng)
  poison = jax.numpy.where(state.step == 3, jax.numpy.nan, 0.0)
  return state, dict(metrics, **{"g/loss": metrics["g/loss"] + poison})


@pytest.fixture
def nan_family(monkeypatch):
  module = type(dcgan)("nan_dcgan")
  for name in ("CONTRACT", "validate", "init", "sample_inputs", "sample"):
    setattr(module, name, getattr(dcgan, name))
  module.train_step = _nan_at_step_3
  monkeypatch.setitem(families.FAMILIES, "nan_dcgan", module)


def test_nonfinite_loss_stops_naming_step_and_metric(workdir, nan_family):
  config = tiny_config("dcgan", family="nan_dcgan", num_train_steps=4)
  with pytest.raises(train.NonFiniteLossError, match=r"g/loss is nan at step 3: .*--config.nonfinite=skip"):
    train.train_and_evaluate(config, str(workdir))


def test_nonfinite_skip_keeps_the_previous_state(tmp_path, nan_family):
  config = tiny_config("dcgan", family="nan_dcgan", nonfinite="skip", num_train_steps=3)
  skipped = train.train_and_evaluate(config, str(tmp_path / "skip"))
  # Two steps of the same compiled program (its poison is for step 3 only): bitwise equal, as two programs need
  # not be (XLA may fuse them differently: 1-ulp apart with its loop emitters).
  reference = train.train_and_evaluate(tiny_config("dcgan", family="nan_dcgan", nonfinite="skip", num_train_steps=2),
                                       str(tmp_path / "two"))
  assert int(skipped.step) == 3
  _assert_trees_equal(skipped.params["g"], reference.params["g"])
  _assert_trees_equal(skipped.params["d"], reference.params["d"])


@pytest.mark.parametrize("overrides, message", [
    ({"family": "stylegan9"}, "unknown family 'stylegan9': set --config.family to one of dcgan, "),
    ({"batch_size": 0}, "config.batch_size=0 must be a positive multiple"),
    ({"num_train_steps": -5}, "config.num_train_steps must be a positive integer"),
    ({"nonfinite": "ignore"}, "config.nonfinite='ignore'"),
    ({"optim.g.lr": -1.0}, "config.optim.g.lr must be > 0"),
    ({"gan_loss": "wgan"}, "set --config.gan_loss to one of"),
    ({"ema_decay": 1.0}, r"config.ema_decay=1.0 must be in \[0, 1\)"),
    ({"profile.num_steps": -1}, "config.profile.num_steps must be an integer >= 0"),
])
def test_bad_config_values_are_user_errors(workdir, overrides, message):
  with pytest.raises(errors.UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
    train.train_and_evaluate(tiny_config("dcgan", **overrides), str(workdir))


@pytest.mark.slow
def test_main_prints_one_line_error_and_exits_2(workdir):
  result = run_main(*_TINY, "--config.family=nope", "--workdir", str(workdir), check=False)
  assert result.returncode == 2
  error_lines = [l for l in result.stderr.splitlines() if l.startswith("facegen_jax: error:")]
  choices = ", ".join(sorted(families.FAMILIES))
  assert error_lines == [f"facegen_jax: error: unknown family 'nope': set --config.family to one of {choices}"]
  assert "Traceback" not in result.stderr
