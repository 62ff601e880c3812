"""Shared test set-up: CPU only, the repo root importable, helpers to build tiny configs and run main."""

import functools
import importlib
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Many tests compile the same tiny steps, in this process and in subprocesses: share the compiled programs.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "facegen_jax_test_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The suite's time is mostly XLA compiles of tiny programs that then run a few steps, so it runs LLVM at -O0
# (XLA's default is -O2). Quiet machine, CPU seconds, -O1 -> -O0: SPADE's tiny step compiles in 60 -> 30 and runs
# 0.29 -> 0.35 per step; TFill's 58 -> 36 and 1.14 -> 2.41. Tests whose programs run long (Inception features,
# many steps) are marked `optimised`: the library's programs (compile.jit) then get -O1 back (test_fid.py: 107 s at
# -O0, 75 s at -O1). XLA:CPU's older loop emitters instead of its MLIR fusion emitters compile faster at the same
# run time (cold cache, quiet machine: TFill's contract case 59 -> 48 s, 33.5 -> 21.1 s of it compiling;
# tests/test_munit.py 203 -> 179 s). Tests only: the library and its benchmarks keep XLA's defaults.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(family: str, /, **overrides):
  """configs/<family>.py:tiny with dotted overrides, e.g. tiny_config("dcgan", **{"optim.g.lr": 1e-3})."""
  config = importlib.import_module(f"configs.{family}").get_config("tiny")
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def init_state(config, seed: int = 0):
  """families.init_state(config, key(seed)) as one program compiled at -O0 (called eagerly, each leaf shape of a
  family's init compiles a program of its own)."""
  import jax  # pylint: disable=g-import-not-at-top
  from facegen_jax import compile as compile_lib  # pylint: disable=g-import-not-at-top
  from facegen_jax import families  # pylint: disable=g-import-not-at-top
  return compile_lib.jit(functools.partial(families.init_state, config), run_once=True)(jax.random.key(seed))


def device_env(devices: int, **extra) -> dict[str, str]:
  """os.environ for a CPU subprocess that simulates `devices` devices (the suite's XLA flags kept)."""
  flags = f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"
  return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", **extra)


def run_main(*args, env=None, timeout=600, check=True):
  """Runs `python -m facegen_jax.main ARGS` from the repo root; returns the CompletedProcess."""
  full_env = dict(os.environ, **(env or {}))
  result = subprocess.run([sys.executable, "-m", "facegen_jax.main", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f"main exited {result.returncode}:\n{result.stderr[-4000:]}")
  return result


def _optimise_if_marked(node, monkeypatch):
  if node.get_closest_marker("optimised"):
    from facegen_jax import compile as compile_lib  # pylint: disable=g-import-not-at-top
    monkeypatch.setitem(compile_lib.CPU_COMPILER_OPTIONS, "xla_backend_optimization_level", 1)


@pytest.fixture(scope="module", autouse=True)
def _optimised_module(request):
  """`pytestmark = pytest.mark.optimised`: for the module's fixtures too (built before function fixtures)."""
  with pytest.MonkeyPatch.context() as monkeypatch:
    _optimise_if_marked(request.node, monkeypatch)
    yield


@pytest.fixture(autouse=True)
def _optimised_test(request, monkeypatch):
  _optimise_if_marked(request.node, monkeypatch)


@pytest.fixture
def workdir(tmp_path):
  return tmp_path / "run"


def tensorboard_scalars(logdir: pathlib.Path) -> dict[str, dict[int, float]]:
  """{tag: {step: value}}: the scalars in a run's TensorBoard event files (CLU's tensors, and simple values)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = {}
  for path in pathlib.Path(logdir).rglob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.HasField("tensor") and not value.tensor.string_val:
          out.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
        elif value.HasField("simple_value"):
          out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out
