"""facegen_jax: face-generation models in JAX/Flax, from a laptop CPU to a TPU pod."""
