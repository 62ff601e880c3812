"""`jit`: `jax.jit` with the XLA options this project's programs need on each backend, in one place.

Every program the project compiles (the train step, init, samples, evaluation, FID features, converters) goes
through `jit`, so a backend's options are chosen here and nowhere else; no module reads them from a layer file.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

# XLA:CPU (jax 0.10) hands 2-D convolutions to YNNPACK by default, whose kernel-gradient convolutions run 2-4x
# slower than Eigen's; this keeps YNNPACK for dots and reductions (without it reductions fall back to a 40x
# slower loop) and gives convolutions back to Eigen. DCGAN-64 step at batch 64 on 2 cores: 1.1-1.2 s with the
# defaults, 0.83-0.89 s with these options.
# The concurrency-optimised scheduler runs independent ops side by side, which on 2 cores only makes them fight
# for the cores and the cache: the SPADE128 G+D step at batch 4 took 12.0-15.6 s (median) with it, 8.7-9.1 s
# without, while its G step, D step and second G forward jitted separately add up to 8.6 s.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
    "xla_cpu_enable_concurrency_optimized_scheduler": False}

# Programs run once (converters' fresh states): XLA:CPU's default optimisation compiles them for 10-70 s.
CPU_FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}

# XLA:TPU (libtpu 0.0.42.1 with jax 0.10.2; v4, v5e, v5p and v6e alike) aborts the process compiling the SPADE
# step, in its space-to-batch pass: "space_to_batch_converter.cc:2007 Check failed: PropagateOnBackpropFilterConv(
# consumer) is OK (Operands to select must be the same shape ...)". The trigger is the kernel gradient of a
# convolution whose input is `jax.nn.one_hot` of labels computed in the program: SPADE's convolutions of the label
# map (tests/test_tpu_aot.py reproduces it with one such convolution). Without the pass SPADE128's step compiles
# (v5e:2x4, batch 32: 1.10 GiB arguments + 1.50 GiB temporaries, 1.17 TFLOP and 29.5 GiB of HBM traffic per chip);
# with the pass and one-hot maps from jnp.where (which it handles) to 1.75 GiB, 1.34 TFLOP and 41.4 GiB, so the
# pass buys these steps nothing. DCGAN-64's step compiles to the same FLOPs, bytes, memory and collectives with
# and without it (benchmarks/tpu_aot.py).
TPU_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "space-to-batch-converter"}

_OPTIONS = {"cpu": CPU_COMPILER_OPTIONS, "tpu": TPU_COMPILER_OPTIONS}


def compiler_options(backend: str | None = None, *, run_once: bool = False) -> dict[str, Any] | None:
  """The options `jit` adds for `backend` (default: JAX's default backend); None where there are none."""
  backend = backend or jax.default_backend()
  if run_once and backend == "cpu":
    return dict(CPU_FAST_COMPILE_OPTIONS)
  options = _OPTIONS.get(backend)
  return dict(options) if options else None


def jit(fun: Callable, *, backend: str | None = None, run_once: bool = False, **jit_kwargs) -> Callable:
  """`jax.jit(fun, **jit_kwargs)` compiled with `compiler_options(backend, run_once=...)`.

  `backend` names the platform the program is compiled for when it is not the default one (ahead-of-time
  compilation for a TPU topology); `run_once` trades run time for compile time on CPU.
  """
  options = compiler_options(backend, run_once=run_once)
  if options:
    jit_kwargs["compiler_options"] = {**options, **jit_kwargs.get("compiler_options", {})}
  return jax.jit(fun, **jit_kwargs)
