"""Face2webtoon's group sampling (config.input.groups): one group per step in every domain, round-robin, each
(domain, group) its own reshuffled stream; synthetic group_counts; folder groups; resume; errors; the flag."""

import hashlib
import os
import subprocess
import sys

from absl import flags
import grain
import ml_collections
from ml_collections import config_flags
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from facegen_jax.errors import ConfigError
from input_pipeline import pipeline
from input_pipeline import synthetic
from tests import iterator_kill
from tests.conftest import REPO
from tests.test_input_pipeline import _assert_same, _batches, _raises

SIZE = 10  # The coded records' side; crops of RESOLUTION from it show where they were taken.
RESOLUTION = 8


class GroupedRecords:
  """Record i is of group `groups[i]` and says so without decoding (record_groups); its image codes i (red)
  and each pixel's row and column (green, blue), so a crop's offset and a flip can be read back."""

  def __init__(self, groups):
    self.groups = np.asarray(groups, np.int32)

  def __len__(self):
    return len(self.groups)

  def __getitem__(self, index):
    rows, cols = np.mgrid[:SIZE, :SIZE]
    image = np.stack([np.full_like(rows, index), rows * 20, cols * 20], axis=-1).astype(np.uint8)
    return {"image": image, "index": np.asarray(index, np.int32), "group": np.asarray(self.groups[index], np.int32)}

  def record_groups(self):
    return self.groups


# Domain a: 7 of group 0, 3 of group 1, 2 of group 2, 1 of group 3; domain b: 2, 4, 3, 5 (interleaved).
GROUPS_A = [0, 0, 1, 0, 2, 0, 1, 0, 3, 0, 2, 1, 0]
GROUPS_B = [3, 1, 3, 0, 2, 1, 3, 2, 1, 3, 0, 2, 1, 3]


def _config(groups=(0, 1, 2, 3), **shared) -> ml_collections.ConfigDict:
  config = pipeline.default_input_config()
  config.read_threads = 2
  config.prefetch_buffer_size = 16
  config.resolution, config.load_size, config.random_crop = RESOLUTION, SIZE, True
  config.domains = ("a", "b")
  config.a, config.b = pipeline.domain_config(), pipeline.domain_config()
  config.groups = groups
  for key, value in shared.items():
    config[key] = value
  return config


def _synthetic_config(groups=(0, 1, 2, 3)) -> ml_collections.ConfigDict:
  """Two synthetic domains (photo a, toon b) at 32 px, the smallest size faces are drawn at."""
  return _config(groups, resolution=32, load_size=None, random_crop=False)


def _sources():
  return {"a": GroupedRecords(GROUPS_A), "b": GroupedRecords(GROUPS_B)}


def _group_batches(n, *, groups=(0, 1, 2, 3), batch_size=4, seed=0, **kwargs):
  return _batches(_config(groups), n, batch_size=batch_size, seed=seed, source=_sources(), **kwargs)


def _stream(batches, domain, group):
  """Group `group`'s records of `domain`, in order: indices and images."""
  picked = [b for b in batches if b[f"{domain}/group"][0] == group]
  return (np.concatenate([b[f"{domain}/index"] for b in picked]),
          np.concatenate([b[f"{domain}/image"] for b in picked]))


@pytest.mark.parametrize("groups", [(0, 1, 2, 3), (0, 1, 3), (3, 0)])
def test_every_step_draws_both_domains_from_one_group_round_robin(groups):
  batches = _group_batches(3 * len(groups), groups=groups)
  for step, batch in enumerate(batches):
    expected = groups[step % len(groups)]
    np.testing.assert_array_equal(batch["a/group"], [expected] * 4)
    np.testing.assert_array_equal(batch["b/group"], [expected] * 4)
    # The records are what they say: their group is the source's group of their index.
    np.testing.assert_array_equal(np.asarray(GROUPS_A)[batch["a/index"]], batch["a/group"])
    np.testing.assert_array_equal(np.asarray(GROUPS_B)[batch["b/index"]], batch["b/group"])


def test_each_groups_epochs_reshuffle_and_cover_all_its_records():
  batches = _group_batches(20, batch_size=6)  # Group 3 of a (1 record) repeats 30 times, group 0 (7) 4 times.
  for domain, groups in (("a", GROUPS_A), ("b", GROUPS_B)):
    for group in range(4):
      indices, _ = _stream(batches, domain, group)
      members = sorted(np.flatnonzero(np.asarray(groups) == group).tolist())
      size = len(members)
      epochs = [indices[i:i + size].tolist() for i in range(0, len(indices) - size + 1, size)]
      assert len(epochs) >= 4 and all(sorted(e) == members for e in epochs), (domain, group, epochs)
      if size > 2:
        assert len({tuple(e) for e in epochs}) > 1, (domain, group, epochs)  # A new order each epoch.


def test_a_groups_stream_does_not_depend_on_the_batch_size_or_the_other_groups():
  # A record's crop and flip are a function of its position in its (domain, group) stream.
  reference = _group_batches(16, batch_size=2)
  for other in (_group_batches(8, batch_size=4), _group_batches(4, groups=(3, 1), batch_size=4)):
    for group in (1, 3):
      for domain in ("a", "b"):
        got_index, got_image = _stream(other, domain, group)
        want_index, want_image = _stream(reference, domain, group)
        n = min(len(got_index), len(want_index))
        assert n >= 8
        np.testing.assert_array_equal(got_index[:n], want_index[:n])
        np.testing.assert_array_equal(got_image[:n], want_image[:n])
  crops = {(int(image[0, 0, 1]), int(min(image[0, 0, 2], image[0, -1, 2])), bool(image[0, 0, 2] > image[0, 1, 2]))
           for image in np.round((np.concatenate([b["a/image"] for b in reference]) + 1) * 127.5)}
  assert len(crops) > 4  # The streams above are compared with crops and flips in them.


def test_process_shards_form_each_steps_global_batch():
  single = _group_batches(8, groups=(0, 1, 3))
  shards = [_group_batches(8, groups=(0, 1, 3), process_index=p, process_count=2) for p in range(2)]
  for step in range(8):
    for key in single[step]:
      union = np.stack([shards[0][step][key], shards[1][step][key]], axis=1).reshape(single[step][key].shape)
      np.testing.assert_array_equal(union, single[step][key], err_msg=key)  # Records p, p + 2, ... of the step.


def test_iterator_state_and_orbax_restore_give_the_same_future_batches(tmp_path):
  config, sources = _config((0, 1, 3)), _sources()
  iterator = pipeline.create_train_iterator(config, seed=3, global_batch_size=4, source=sources)
  for _ in range(7):  # Past several epochs of the small groups, mid-round (step 7 is group 1).
    next(iterator)
  state = iterator.get_state()
  manager = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(create=True))
  manager.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = [next(iterator) for _ in range(5)]
  iterator.set_state(state)
  _assert_same([next(iterator) for _ in range(5)], expected)
  iterator.close()
  fresh = pipeline.create_train_iterator(config, seed=3, global_batch_size=4, source=sources)
  manager.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  restored = [next(fresh) for _ in range(5)]
  _assert_same(restored, expected)
  assert [int(b["a/group"][0]) for b in restored] == [1, 3, 0, 1, 3]
  fresh.close()
  manager.close()


@pytest.mark.slow  # Two worker processes: ~8 s.
def test_worker_processes_give_the_same_grouped_batches_as_threads():
  in_threads = _group_batches(4, groups=(0, 1, 3))
  config = _config((0, 1, 3), worker_count=2)
  _assert_same(_batches(config, 4, source=_sources()), in_threads)


def test_without_groups_batches_mix_groups_and_the_seed_changes_the_group_streams():
  plain = _group_batches(4, groups=())
  assert len({int(g) for b in plain for g in b["a/group"]}) > 1  # Groups mixed within batches, as before.
  first, other = _group_batches(4, seed=1), _group_batches(4, seed=2)
  assert not all(np.array_equal(x["b/index"], y["b/index"]) for x, y in zip(first, other))


# Synthetic faces: groups from traits, exact counts.


def test_synthetic_record_groups_match_the_rendered_faces():
  source = synthetic.SyntheticFaces(40, 32, seed=5, num_identities=10)
  np.testing.assert_array_equal(source.record_groups(), [int(source[i]["group"]) for i in range(40)])
  assert [synthetic.identity_group(5, i) for i in range(10)] == source.record_groups()[:10].tolist()


def test_synthetic_group_counts_give_exact_deterministic_counts():
  config = _synthetic_config()
  config.b.synthetic.group_counts = (1050, 249, 49, 38)  # The seed's webtoon groups.
  config.a.synthetic.group_counts = [5, 3, 2, 2]  # A list, as config.json gives it back.
  built = pipeline.create_sources(config)
  toon = built["b"]
  assert len(toon) == 1386 and toon.domain == "toon"
  np.testing.assert_array_equal(np.bincount(toon.record_groups(), minlength=4), [1050, 249, 49, 38])
  np.testing.assert_array_equal(np.bincount(built["a"].record_groups(), minlength=4), [5, 3, 2, 2])
  again = pipeline.create_source(config, "b")
  assert [again.render_index(i) for i in range(1386)] == [toon.render_index(i) for i in range(1386)]
  for i in range(0, 1386, 173):  # What a record says it is, it renders as.
    assert int(toon[i]["group"]) == toon.record_groups()[i]
  # ~4 views of each identity of each group, every identity of a group an equal share.
  identities = np.array([toon.render_index(i) for i in range(1386)]) % toon.num_identities
  views = np.bincount(identities[toon.record_groups() == 3])
  assert set(views[views > 0].tolist()) <= {3, 4}
  line = pipeline.describe(config, built)
  assert "1,050 / 249 / 49 / 38 per group" in line and "b {0: 1,050, 1: 249, 2: 49, 3: 38}" in line
  assert "round-robin over groups (0, 1, 2, 3)" in line


def test_synthetic_two_domain_steps_share_a_group():
  config = _synthetic_config((0, 1, 3))
  config.a.synthetic.group_counts, config.b.synthetic.group_counts = (4, 3, 1, 2), (3, 2, 2, 3)
  for step, batch in enumerate(_batches(config, 6, batch_size=2)):
    expected = (0, 1, 3)[step % 3]
    assert batch["a/group"].tolist() == batch["b/group"].tolist() == [expected] * 2
    assert batch["a/image"].shape == (2, 32, 32, 3)


# Folder sources with <image_dir>/<group>/ subfolders.


def _save_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def _group_folder(root, counts):
  """root/<g>/<i>.png for each {g: n}; the image's grey level is 40 g + 5 i, so it says its folder."""
  for group, count in counts.items():
    for i in range(count):
      _save_png(root / str(group) / f"{i}.png", np.full((8, 8, 3), 40 * group + 5 * i, np.uint8))
  return str(root)


def test_folder_groups_round_robin_across_trainA_and_trainB(tmp_path):
  config = _config((0, 1, 3), resolution=8, load_size=None, random_crop=False)
  config.a = pipeline.domain_config(source="folder", folder=dict(
      image_dir=_group_folder(tmp_path / "trainA", {0: 5, 1: 2, 2: 1, 3: 1}), groups=True))
  config.b = pipeline.domain_config(source="folder", folder=dict(
      image_dir=_group_folder(tmp_path / "trainB", {0: 3, 1: 3, 3: 2}), groups=True))
  built = pipeline.create_sources(config)
  assert "a {0: 5, 1: 2, 2: 1 unused, 3: 1}, b {0: 3, 1: 3, 3: 2}" in pipeline.describe(config, built)
  for step, batch in enumerate(_batches(config, 9, batch_size=2, source=built)):
    expected = (0, 1, 3)[step % 3]
    for domain in ("a", "b"):
      assert batch[f"{domain}/group"].tolist() == [expected] * 2
      grey = np.round((batch[f"{domain}/image"][:, 0, 0, 0] + 1) * 127.5).astype(int)
      np.testing.assert_array_equal(grey // 40, [expected] * 2)  # The image is from that folder.


def test_an_unreadable_file_is_replaced_by_a_record_of_its_group(tmp_path):
  root = _group_folder(tmp_path / "trainA", {0: 3, 1: 3})
  (tmp_path / "trainA" / "1" / "1.png").write_bytes(b"not a png")
  config = pipeline.default_input_config()
  config.source, config.folder.image_dir, config.folder.groups = "folder", root, True
  config.resolution, config.read_threads, config.groups = 8, 2, (0, 1)
  batches = _batches(config, 8, batch_size=3)
  for step, batch in enumerate(batches):
    assert batch["group"].tolist() == [step % 2] * 3
  greys = {int(v) for b in batches[1::2] for v in np.round((b["image"][:, 0, 0, 0] + 1) * 127.5)}
  assert greys == {40, 50}  # Group 1's two readable images, never its unreadable one (45) nor another group.


# Errors and the flag.


def test_a_group_missing_from_a_domain_is_a_config_error_naming_it(tmp_path):
  config = _synthetic_config((0, 1, 2))
  config.b.synthetic.group_counts = (4, 4, 0, 4)
  _raises(ConfigError, ["input.groups (0, 1, 2) has group 2", "domain 'b' (input.b)", "its groups: [0, 1, 3]",
                        "--config.input.groups"], lambda: pipeline.create_sources(config))
  _raises(ConfigError, ["has group 2", "domain 'b'", "[0, 1, 3]"],
          lambda: _batches(config, 1, source={"a": GroupedRecords(GROUPS_A), "b": GroupedRecords([0, 1, 3])}))
  folder = _synthetic_config((0, 1, 3))
  folder.b.synthetic.group_counts = (1, 1, 1, 1)
  folder.a = pipeline.domain_config(source="folder", folder=dict(
      image_dir=_group_folder(tmp_path / "trainA", {0: 1, 1: 1, 2: 1}), groups=True))
  _raises(ConfigError, ["has group 3", "domain 'a' (input.a)", "its groups: [0, 1, 2]"],
          lambda: pipeline.create_sources(folder))
  folder.a.folder.groups = False
  _raises(ConfigError, ["domain 'a' (input.a) has none", "--config.input.a.folder.groups=True"],
          lambda: pipeline.create_sources(folder))


@pytest.mark.parametrize("value,message", [((0, 1, 1), "repeats group 1"), ((0, -1), "negative id -1"),
                                           (("a,b",), "'a', which is not an int"), ((1.5,), "1.5"),
                                           ((True,), "True"), ("x", "'x'")])
def test_bad_groups_are_config_errors_naming_the_flag(value, message):
  config = pipeline.default_input_config()
  config.groups = value if isinstance(value, tuple) else (value,)
  _raises(ConfigError, ["input.groups", message, "--config.input.groups=0,1,3"], lambda: pipeline.validate(config))


def test_bad_group_counts_are_config_errors_naming_the_flag():
  config = _synthetic_config()
  for bad in ((1, 2, 3), (1, -2, 3, 4), (0, 0, 0, 0), "many"):
    config.b.synthetic.group_counts = bad
    _raises(ConfigError, ["input.b.synthetic.group_counts", "--config.input.b.synthetic.group_counts="],
            lambda: pipeline.validate(config))


def _parse(argv: list[str]) -> ml_collections.ConfigDict:
  """The config main's --config flag (a config file, lock_config=True) gives for `argv`."""
  values = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                           sys_argv=argv)
  values(argv)
  return config.value


@pytest.mark.parametrize("flag_values,expected", [
    (["0,1,3"], (0, 1, 3)), (["(0, 1, 3)"], (0, 1, 3)), (["[0,1,3]"], (0, 1, 3)), (["2"], (2,)),
    (["0", "1"], (0, 1)), (['"0,1,3"'], (0, 1, 3)), ([""], ())])
def test_the_groups_flag_forms(flag_values, expected):
  argv = ["main", "--config", str(REPO / "configs" / "dcgan.py:tiny")]
  argv += [f"--config.input.groups={value}" for value in flag_values]
  config = _parse(argv + ["--config.input.synthetic.group_counts=6,4,3,3"])
  assert pipeline.group_ids(config.input) == expected
  assert np.bincount(pipeline.create_source(config.input).record_groups()).tolist() == [6, 4, 3, 3]


def test_the_groups_flag_on_a_shared_object_typed_field(tmp_path):
  # A family config may keep the groups in a top-level FieldReference(object) that config.input.groups refers
  # to: that flag parses literally, so --config.groups=2 gives the int 2 and "a,b" the string 'a,b'.
  config_file = tmp_path / "grouped.py"
  config_file.write_text(
      "import ml_collections\nfrom configs import dcgan\n\ndef get_config():\n  config = dcgan.get_config('tiny')\n"
      "  config.groups = ml_collections.FieldReference((), field_type=object)\n"
      "  config.input.groups = config.get_ref('groups')\n  return config\n")
  argv = ["main", "--config", str(config_file)]
  for value, expected in (("0,1,3", (0, 1, 3)), ("2", (2,)), ("(1, 3)", (1, 3)), ("", ())):
    assert pipeline.group_ids(_parse(argv + [f"--config.groups={value}"]).input) == expected, value
  _raises(ConfigError, ["'a,b'", "--config.input.groups=0,1,3"],
          lambda: pipeline.group_ids(_parse(argv + ["--config.groups=a,b"]).input))


@pytest.mark.slow
def test_the_groups_flag_through_main(tmp_path):
  """main's own flags: a valid value reaches the config; an invalid one stops main with the fix, before
  training (exit code 2)."""
  script = ("import sys; from absl import flags; from facegen_jax import main; from input_pipeline import pipeline;"
            "flags.FLAGS(sys.argv); c = main._CONFIG.value;"
            "print(pipeline.group_ids(c.input), pipeline.describe(c.input))")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  parsed = subprocess.Popen([sys.executable, "-c", script, "--config", "configs/dcgan.py:tiny",
                             "--config.input.groups=0,1,3", "--config.input.synthetic.group_counts=5,2,1,1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  failed = subprocess.run([sys.executable, "-m", "facegen_jax.main", "--config", "configs/dcgan.py:tiny",
                           "--workdir", str(tmp_path / "run"), "--config.input.groups=0,-1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  out, err = parsed.communicate(timeout=300)
  assert parsed.returncode == 0, err[-2000:]
  assert out.startswith("(0, 1, 3) ") and "round-robin over groups (0, 1, 3)" in out
  assert "{0: 5, 1: 2, 2: 1 unused, 3: 1}" in out
  assert failed.returncode == 2, failed.stderr[-2000:]
  assert "input.groups (0, -1) has the negative id -1" in failed.stderr and "--config.input.groups=0,1,3" in failed.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


# Resuming after SIGKILL.


def _digest(batch: dict) -> str:
  digest = hashlib.sha256()
  for key in sorted(batch):
    digest.update(key.encode() + np.ascontiguousarray(batch[key]).tobytes())
  return digest.hexdigest()[:16]


def _child(checkpoint_dir: str, steps: int, save_every: int) -> None:
  """Iterates a grouped two-domain iterator, saving it every `save_every` batches (restoring the latest save
  first, if any) and printing "step digest" per batch."""
  iterator = pipeline.create_train_iterator(_config((0, 1, 3)), seed=5, global_batch_size=4, source=_sources())
  iterator_kill.child(iterator, _digest, checkpoint_dir, steps, save_every)


@pytest.mark.slow
def test_a_grouped_iterator_resumes_bit_exactly_after_sigkill(tmp_path):
  steps, save_every = 24, 4
  iterator = pipeline.create_train_iterator(_config((0, 1, 3)), seed=5, global_batch_size=4, source=_sources())
  expected = {step + 1: _digest(next(iterator)) for step in range(steps)}
  iterator.close()
  iterator_kill.kill_and_resume("tests.test_input_groups", tmp_path / "ckpt", steps=steps, save_every=save_every,
                               kill_at=10, expected=expected)


if __name__ == "__main__":
  _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
