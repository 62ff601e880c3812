"""`convert tfill` on tests/tfill_torch.py's rebuild of TFill's networks at toy sizes with random weights, saved as
TFill's save_networks does (torch.save of each bare module's state_dict as <which>_net_<name>.pth): the sizes read
from the shapes (and from the real-size rebuild's), and the errors."""

import numpy as np
import pytest

from facegen_jax.convert import tfill as convert_tfill
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.errors import UserError
from tests import tfill_torch

torch = pytest.importorskip("torch", reason="computes reference outputs with torch: see requirements-test.txt")
torch.set_num_threads(1)  # A second thread only fights the other jobs on these cores for tiny forwards.

# Toy sizes the families build (4 downsamplings, 2 residual blocks, 8 heads): ngf 4 -> embed 64, 2x2 tokens.
NGF, EMBED, DIM_CONV, LAYERS, FIXED, FINE, MAX_CHANNELS = 4, 64, 96, 2, 32, 64, 16
TOL = 1e-4  # The bound on `inpaint --save_raw` against the original, in [-1, 1].


def _torch_nets(seed=0, noise=False):
  """{name: torch module} with random weights (biases and alphas too); noise alphas 0 unless `noise`."""
  _, ref = tfill_torch.rebuild()
  torch.manual_seed(seed)
  nets = {"E": ref["DiffEncoder"](NGF, 1, EMBED, 4), "T": ref["Transformer"](EMBED, EMBED, EMBED, DIM_CONV, 8, LAYERS),
          "G": ref["DiffDecoder"](EMBED, NGF, 4, 8, DIM_CONV, []),
          "G_Ref": ref["RefinedGenerator"](NGF, EMBED, 4, 1, 2),
          "D": ref["StyleDiscriminator"](FIXED, 32, MAX_CHANNELS), "D_Ref": ref["StyleDiscriminator"](FINE, 32, MAX_CHANNELS)}
  for i, net in enumerate(nets.values()):
    tfill_torch.randomise(torch, net, seed + i)
    net.eval()
  with torch.no_grad():
    for key, value in nets["G"].named_parameters():
      if ".noise." in key:
        value.fill_(0.3 if noise else 0.0)
  return nets


def _save(nets, directory, which="latest", names=None, prefix=""):
  directory.mkdir(parents=True, exist_ok=True)
  for name in names or nets:
    state_dict = {prefix + k: v for k, v in nets[name].state_dict().items()}
    torch.save(state_dict, directory / f"{which}_net_{name}.pth")
  return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  nets = _torch_nets()
  return nets, _save(nets, tmp_path_factory.mktemp("tfill") / "celeba")


def _expected_model(**overrides):
  model = dict(ngf=NGF, kernel_E=1, down_scale=4, num_res_blocks=2, embed_dim=EMBED, attn_E=False,
               n_encoders=LAYERS, dim_conv=DIM_CONV, kernel_T=1, kernel_G=3, add_noise=True, attn_G=True,
               down_layers=4, mid_layers=1, max_channels=MAX_CHANNELS, ndf=32, fixed_size=FIXED, fine_size=FINE)
  model.update(overrides)
  return model


def test_sizes_from_the_shapes(checkpoints):
  _, directory = checkpoints
  paths = convert_tfill.find_files(str(directory))
  assert sorted(paths) == ["D", "D_Ref", "E", "G", "G_Ref", "T"]
  networks = convert_tfill.read_networks(paths)
  assert convert_tfill.detect(networks, paths) == _expected_model()
  coarse = {k: v for k, v in networks.items() if k in ("E", "T", "G")}
  model = convert_tfill.detect(coarse, paths, fixed_size=64, fine_size=128)
  assert model == {k: v for k, v in _expected_model(fixed_size=64, fine_size=128).items()
                   if k not in ("down_layers", "mid_layers", "max_channels", "ndf")}
  assert convert_tfill.detect(coarse, paths)["fixed_size"] == 256 and convert_tfill.detect(coarse, paths)[
      "fine_size"] == 512
  with pytest.raises(UserError, match=r"--fixed_size 64, but .*latest_net_D.pth is a discriminator for 32 px"):
    convert_tfill.detect(networks, paths, fixed_size=64)
  with pytest.raises(UserError, match="multiple of 16 up to 512"):
    convert_tfill.detect(coarse, paths, fixed_size=40)


def test_real_size_shapes_detected():
  """The published checkpoints' options from the shapes of the real-size rebuild (meta tensors, no memory)."""
  _, ref = tfill_torch.rebuild()
  with torch.device("meta"):
    nets = {"E": ref["DiffEncoder"](32, 1, 512, 4), "T": ref["Transformer"](512, 512, 512, 2048, 8, 12),
            "G": ref["DiffDecoder"](512, 32, 4, 8, 2048, []), "G_Ref": ref["RefinedGenerator"](32, 512, 4, 6, 2),
            "D": ref["StyleDiscriminator"](256), "D_Ref": ref["StyleDiscriminator"](512)}
  blur = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64
  networks = {name: tfill_torch_layout(net, blur) for name, net in nets.items()}
  assert convert_tfill.detect(networks, {name: name for name in nets}) == _expected_model(
      ngf=32, embed_dim=512, n_encoders=12, dim_conv=2048, mid_layers=6, max_channels=512, fixed_size=256,
      fine_size=512)


def tfill_torch_layout(net, blur):
  state_dict = {k: blur if k.endswith(".kernel") and v.ndim == 2 else np.broadcast_to(np.float32(0), v.shape)
                for k, v in net.state_dict().items()}
  from facegen_jax.nets import tfill as nets  # pylint: disable=g-import-not-at-top
  return nets.flax_layout_state_dict(state_dict)


def test_errors_name_the_problem(checkpoints, tmp_path, capsys):
  nets, directory = checkpoints
  with pytest.raises(UserError, match="is not a directory"):
    convert_tfill.find_files(str(tmp_path / "nowhere"))
  partial = _save(nets, tmp_path / "partial", names=["E", "G"])
  with pytest.raises(UserError, match=r"has no latest_net_T.pth; it holds latest_net_\*"):
    convert_tfill.find_files(str(partial))
  iters = _save(nets, tmp_path / "iters", which="100000", names=["E", "T", "G"])
  with pytest.raises(UserError, match=r"no latest_net_E.pth, latest_net_T.pth, latest_net_G.pth; it holds "
                                      r"100000_net_\*: pass --which_iter N"):
    convert_tfill.find_files(str(iters))
  assert sorted(convert_tfill.find_files(str(iters), 100000)) == ["E", "G", "T"]
  # G_Ref's file where G's belongs: G's keys are missing and G_Ref's unexpected, listed.
  swapped = tmp_path / "swapped"
  _save(nets, swapped, names=["E", "T"])
  torch.save(nets["G_Ref"].state_dict(), swapped / "latest_net_G.pth")
  with pytest.raises(UserError, match=r"latest_net_G.pth: G has no conv_in.weight: not a TFill G"):
    convert_tfill.convert(str(swapped), str(tmp_path / "out"))
  wrong = tmp_path / "wrong"
  _save(nets, wrong, names=["E", "T", "G"])
  state_dict = nets["T"].state_dict()
  state_dict["extra.weight"] = torch.zeros(3)
  del state_dict["to_token.2.bias"]
  torch.save(state_dict, wrong / "latest_net_T.pth")
  with pytest.raises(UserError, match=r"latest_net_T.pth does not match the model read from it: missing keys 1: "
                                      r"to_token.2.bias; unexpected keys 1: extra.weight"):
    convert_tfill.convert(str(wrong), str(tmp_path / "out"))
  assert convert_main(["tfill", "--checkpoint_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
  assert capsys.readouterr().err.startswith("facegen_jax.convert: error: --checkpoint_dir ")
