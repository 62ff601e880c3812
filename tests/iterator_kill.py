"""The SIGKILL-resume check of an input iterator, shared by the input-pipeline tests: a child process iterates,
saving the iterator as the train loop does; the parent kills it past a save, restarts it, and compares every
batch's digest with an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import grain
import orbax.checkpoint as ocp

from tests.conftest import REPO


def child(iterator, digest, checkpoint_dir: str, steps: int, save_every: int) -> None:
  """Iterates `iterator`, saving it every `save_every` batches (restoring the latest save first, if any) and
  printing "step digest" per batch."""
  manager = ocp.CheckpointManager(checkpoint_dir, options=ocp.CheckpointManagerOptions(create=True, max_to_keep=2))
  step = manager.latest_step() or 0
  if step:
    manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator)))
  while step < steps:
    batch = next(iterator)
    step += 1
    print(step, digest(batch), flush=True)
    if step % save_every == 0:
      manager.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
      manager.wait_until_finished()
    time.sleep(0.1)  # Time for the parent to kill it between two saves.
  manager.close()


def kill_and_resume(module: str, checkpoint_dir, *, steps: int, save_every: int, kill_at: int,
                    expected: dict[int, str]) -> None:
  """Runs `python -m module checkpoint_dir steps save_every`, SIGKILLs it once it printed step `kill_at`, runs it
  again, and asserts the batches seen before and after are the uninterrupted `expected` ones, the second run
  starting after a save (the last one before `kill_at`, or the next if the kill came late)."""
  command = [sys.executable, "-m", module, str(checkpoint_dir), str(steps), str(save_every)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  killed = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = {}
  for line in killed.stdout:
    step, digest = line.split()
    seen[int(step)] = digest
    if int(step) == kill_at:
      killed.send_signal(signal.SIGKILL)
      break
  killed.wait(timeout=60)
  assert killed.returncode == -signal.SIGKILL, killed.stderr.read()[-2000:]
  resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  seen_after = {int(step): digest for step, digest in (line.split() for line in resumed.stdout.splitlines())}
  last_save = kill_at // save_every * save_every
  assert min(seen_after) in (last_save + 1, last_save + save_every + 1) and max(seen_after) == steps, sorted(
      seen_after)
  assert {**seen, **seen_after} == expected
