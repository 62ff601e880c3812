"""`python -m facegen_jax.main --config C --describe`: every network's parameter count and output shapes.

Counts are of the trainable parameters (flax's "params" collection), which is how the originals count them
(`sum(p.numel() for p in net.parameters())`; spectral norm's u and v and BatchNorm's running statistics are
buffers there and collections here). Nothing is computed: shapes come from `jax.eval_shape`.
"""

from __future__ import annotations

import jax
import ml_collections

from facegen_jax import families
from facegen_jax.families import common


def _shapes(tree) -> str:
  """A readable form of an output tree's shapes: (1, 64, 64, 3), or [..] for lists of scales/features."""
  if isinstance(tree, (list, tuple)):
    return "[" + ", ".join(_shapes(x) for x in tree) + "]"
  if isinstance(tree, dict):
    return "{" + ", ".join(f"{k}: {_shapes(v)}" for k, v in tree.items()) + "}"
  if tree is None:
    return "None"
  return str(tuple(tree.shape))


def networks(config: ml_collections.ConfigDict) -> list[dict]:
  """[{"name", "params", "output"}] for each network of the family, at batch 1."""
  family = families.get_family(config.family)
  rows = []
  for name, (module, inputs, *kwargs) in family.networks(config).items():
    kwargs = kwargs[0] if kwargs else {"train": False}
    variables, output = jax.eval_shape(
        lambda key, inputs=inputs, module=module, kwargs=kwargs: module.init_with_output(key, *inputs,
                                                                                         **kwargs)[::-1],
        jax.random.key(0))
    rows.append({"name": name, "params": common.count_params(variables.get("params", {})),
                 "output": _shapes(output)})
  return rows


def text(config: ml_collections.ConfigDict) -> str:
  """The table `main --describe` prints, with the optimizer groups and the task."""
  family = families.get_family(config.family)
  contract = family.CONTRACT
  rows = networks(config)
  width = max(len(r["name"]) for r in rows)
  lines = [f"{config.family}: task {contract.task!r}, optimizer groups {', '.join(contract.optimizer_groups)}, "
           f"eval outputs {', '.join(contract.eval_outputs)}"]
  lines += [f"  {r['name']:<{width}}  {r['params']:>14,} parameters  output {r['output']}" for r in rows]
  lines.append(f"  {'total':<{width}}  {sum(r['params'] for r in rows):>14,} parameters")
  return "\n".join(lines)
