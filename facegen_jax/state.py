"""The one train state of every family: trees keyed by parameter group, so the loop never learns a model's shape.

  TrainState(
      step,         # int32 scalar
      params,       # {group: params}, e.g. {"g": ..., "d": ...}, {"vae": ...}, {"g": {"a2b", "b2a"}, "d": {...}}
      opt_state,    # {group: optax state} for the groups the family trains (a frozen network has params, no
                    # optimizer)
      collections,  # {group: {collection: tree}}: variables no optimizer touches (BatchNorm's running
                    # statistics, spectral norm's u and v), shaped as the family's networks keep them
      ema,          # {group: params}: the moving average of the family's EMA groups (config.ema_decay > 0)
      extra,        # {name: array}: values a step owns and a checkpoint keeps (ADA's p, an annealed weight)
  )

`families.init_state(config, rng)` builds it (for training, restore and the converters alike). The loop reads
`step`, updates `ema` and otherwise maps over whole trees; a family's step reads and replaces the groups it owns.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict[str, PyTree]
  opt_state: dict[str, optax.OptState]
  collections: dict[str, PyTree]
  ema: dict[str, PyTree]
  extra: dict[str, jax.Array]

  def update(self, group: str, tx: optax.GradientTransformation, grads: PyTree) -> "TrainState":
    """One optimizer update of `group` with `grads`."""
    updates, opt_state = tx.update(grads, self.opt_state[group], self.params[group])
    return self.replace(params={**self.params, group: optax.apply_updates(self.params[group], updates)},
                        opt_state={**self.opt_state, group: opt_state})

  def with_collections(self, group: str, collections: PyTree) -> "TrainState":
    return self.replace(collections={**self.collections, group: collections})


def create(params: dict, collections: dict, txs: dict[str, optax.GradientTransformation], *,
           ema_groups=(), extra: dict | None = None) -> TrainState:
  """Step 0: optimizer states for the groups in `txs`, EMA copies of `ema_groups`."""
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state={group: tx.init(params[group]) for group, tx in txs.items()},
      collections=collections, ema={group: jax.tree.map(jnp.copy, params[group]) for group in ema_groups},
      extra=dict(extra or {}))


def inference_state(state: TrainState) -> TrainState:
  """The state with each EMA group's average in place of its parameters: what samples, evaluation and the
  inference commands use."""
  return state.replace(params={**state.params, **state.ema}) if state.ema else state


def update_ema(new: TrainState, decay: float) -> TrainState:
  """ema <- decay * ema + (1 - decay) * params, for every EMA group, after the step's updates."""
  return new.replace(ema={group: optax.incremental_update(new.params[group], average, step_size=1.0 - decay)
                          for group, average in new.ema.items()})
