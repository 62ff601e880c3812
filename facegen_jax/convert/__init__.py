"""Importers of PyTorch checkpoints: `python -m facegen_jax.convert SUBCOMMAND --help`.

torch is never imported: `torch_reader` reads torch.save / torch.jit.save files with a restricted unpickler,
and each converter (`vgg19`, ...) maps the names and layouts to a file facegen_jax loads.
"""
