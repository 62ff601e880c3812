"""What the families share: small helpers for their steps (the train state is `facegen_jax.state`)."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def to_compute(config, tree):
  """Floating leaves of `tree` in config.compute_dtype ("bfloat16": mixed precision).

  Families cast parameters and inputs with this inside the function they differentiate, so the gradient comes
  back through the cast to the float32 parameters in float32: parameters, optimizer state, running statistics
  (not cast: they are not parameters) and losses stay float32, the network's convolutions and matmuls run in
  bfloat16. Three tree maps, so no mixed-precision library (jmp, unmaintained since 2022) is worth a dependency.
  """
  dtype = COMPUTE_DTYPES[config.get("compute_dtype", "float32")]
  if dtype == jnp.float32:
    return tree
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def to_float32(tree):
  """Floating leaves back to float32 (network outputs, before any loss)."""
  return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def shard_over_batch(x: jax.Array) -> jax.Array:
  """Splits x's leading (batch) axis over the mesh axis "data" when traced under the loop's mesh.

  For values a step creates rather than reads (DCGAN's z): left to itself, XLA replicates an array drawn from
  a replicated key, and every device would then run G on the whole batch.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "data" not in mesh.axis_names:
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec("data"))


def step_rngs(rng: jax.Array, *names: str) -> dict[str, jax.Array]:
  """Splits one step's key into named keys, so adding a name never changes the others' streams."""
  return {name: jax.random.fold_in(rng, i) for i, name in enumerate(names)}


def count_params(params: PyTree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def normal_init(stddev: float, mean: float = 0.0):
  """PyTorch's `nn.init.normal_(w, mean, std)`, the init DCGAN-style models use."""
  def init(key, shape, dtype=jnp.float32):
    return mean + stddev * jax.random.normal(key, shape, dtype)
  return init
