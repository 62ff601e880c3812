"""Importers of PyTorch checkpoints: `python -m facegen_jax.convert SUBCOMMAND --help`.

torch is never imported: `torch_reader` reads torch.save / torch.jit.save files with a restricted unpickler,
`torch_map` maps torch keys and layouts onto flax variables (and checks them), and each converter (`vgg19`, ...)
holds its network's key table and writes a file facegen_jax loads.
"""
