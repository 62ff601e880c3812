"""torch_reader against torch itself: files written by torch.save / torch.jit.save read back exactly, without torch.

torch is used here only to write the files and to say what they hold; the reader never imports it.
"""

import collections
import os
import pickle
import tarfile
import zipfile

import ml_dtypes
import numpy as np
import pytest

from facegen_jax.convert import torch_reader
from facegen_jax.errors import DataError

torch = pytest.importorskip("torch", reason="writes checkpoints with torch: see requirements-test.txt")
pytestmark = pytest.mark.slow  # imports torch


def _numpy(t):
  """What the reader should return for tensor t: same values, same dtype (bfloat16 / float8 via ml_dtypes)."""
  special = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn}
  if t.dtype in special:
    return t.float().numpy().astype(special[t.dtype])
  return t.detach().numpy()


def _assert_same(got, want):
  assert list(got) == list(want)
  for name, tensor in want.items():
    expected = _numpy(tensor)
    assert got[name].dtype == expected.dtype, name
    assert got[name].shape == expected.shape, name
    # Bitwise, so NaN-free random data, -0.0 and float8 rounding all have to match.
    assert got[name].tobytes() == expected.tobytes(), name
    assert got[name].flags.c_contiguous


def _varied_state_dict():
  gen = torch.Generator().manual_seed(0)
  base = torch.randn(5, 6, generator=gen)
  return {
    "f32": base,
    "slice_with_offset": base[2:4, 1:5],  # storage offset 13, strides (6, 1), shares base's storage
    "transposed": base.t(),  # non-contiguous strides (1, 6)
    "strided": base[::2, ::3],
    "scalar_f64": torch.tensor(3.25, dtype=torch.float64),  # 0-d
    "f16": torch.randn(3, 4, generator=gen).half(),
    "bf16": torch.randn(4, 3, generator=gen).to(torch.bfloat16).t(),
    "f8": torch.randn(7, generator=gen).to(torch.float8_e4m3fn),
    "i64": torch.arange(-3, 9).reshape(3, 4)[:, 1:],
    "i32": torch.tensor([1, -2, 2**31 - 1], dtype=torch.int32),
    "u8": torch.tensor([0, 7, 255], dtype=torch.uint8),
    "bool": torch.tensor([[True, False], [False, True]]),
    "c64": torch.randn(3, dtype=torch.complex64, generator=gen),
    "empty": torch.zeros(0, 3),
    "expanded": torch.ones(1, 3).expand(4, 3),  # stride 0
  }


@pytest.fixture(params=["zip", "legacy"])
def save(request):
  """torch.save in the current zip format, or in the legacy one (torch < 1.6; torchvision's old weights)."""
  return lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=request.param == "zip")


def test_state_dict_dtypes_views_and_strides_read_back_exactly(tmp_path, save):
  sd = _varied_state_dict()
  save(sd, tmp_path / "sd.pt")
  _assert_same(torch_reader.load_state_dict(tmp_path / "sd.pt"), sd)


def test_tensors_sharing_a_storage_come_back_as_separate_copies(tmp_path, save):
  base = torch.arange(12, dtype=torch.float32)
  save({"a": base[:6].view(2, 3), "b": base[3:], "c": base.view(3, 4).t()}, tmp_path / "shared.pt")
  got = torch_reader.load_state_dict(tmp_path / "shared.pt")
  np.testing.assert_array_equal(got["a"], [[0, 1, 2], [3, 4, 5]])
  np.testing.assert_array_equal(got["b"], np.arange(3, 12))
  np.testing.assert_array_equal(got["c"], np.arange(12).reshape(3, 4).T)
  got["a"][0, 0] = 100
  assert got["b"][0] == 3 and got["c"][0, 0] == 0


def test_module_state_dict_and_nested_checkpoints(tmp_path, save):
  model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
  sd = model.state_dict()  # an OrderedDict with _metadata, num_batches_tracked an int64 0-d tensor
  save(sd, tmp_path / "sd.pt")
  _assert_same(torch_reader.load_state_dict(tmp_path / "sd.pt"), sd)

  # A training checkpoint: the state_dict is found under a known key beside non-tensor entries.
  save({"epoch": 3, "state_dict": sd, "note": b"bytes", "tags": {"a", "b"}, "lr": [1e-3, 2e-4]}, tmp_path / "ckpt.pt")
  _assert_same(torch_reader.load_state_dict(tmp_path / "ckpt.pt"), sd)
  everything = torch_reader.load_checkpoint(tmp_path / "ckpt.pt")
  assert (everything["epoch"], everything["note"], everything["tags"]) == (3, b"bytes", {"a", "b"})

  # Nested mappings of tensors flatten to dotted names; key= picks one.
  nets = {"net_G": {"w": torch.ones(2)}, "net_D": collections.OrderedDict(head={"b": torch.zeros(1)})}
  save(nets, tmp_path / "nets.pt")
  assert list(torch_reader.load_state_dict(tmp_path / "nets.pt")) == ["net_G.w", "net_D.head.b"]
  assert list(torch_reader.load_state_dict(tmp_path / "nets.pt", key="net_D")) == ["head.b"]
  with pytest.raises(DataError, match="no key 'net_E'"):
    torch_reader.load_state_dict(tmp_path / "nets.pt", key="net_E")
  save({"epoch": 3, "weights": [torch.ones(1)]}, tmp_path / "odd.pt")
  with pytest.raises(DataError, match="holds no state_dict.*pass key="):
    torch_reader.load_state_dict(tmp_path / "odd.pt")


class _Blocks(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 5), torch.nn.Linear(5, 2, bias=False)])

  def forward(self, x):
    for layer in self.layers:
      x = torch.relu(layer(x))
    return x


class _ScriptNet(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    self.bn = torch.nn.BatchNorm2d(4)
    self.down = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, stride=2), torch.nn.ReLU())
    self.blocks = _Blocks()
    self.scale = torch.nn.Parameter(torch.randn(4, 2).t())  # a non-contiguous parameter
    self.register_buffer("ema", torch.arange(3.0))
    self.register_buffer("scratch", torch.zeros(2), persistent=False)  # torch.jit's state_dict keeps it

  def forward(self, x):
    x = self.down(self.bn(self.conv(x))).mean((2, 3))
    return self.blocks(x) * self.scale.sum()


def test_torchscript_params_match_state_dict(tmp_path):
  torch.manual_seed(0)
  net = _ScriptNet()
  net.train()(torch.randn(2, 3, 8, 8))  # non-trivial running statistics and num_batches_tracked
  scripted, traced = torch.jit.script(net), torch.jit.trace(net.eval(), torch.randn(1, 3, 8, 8))
  for name, module in {"scripted": scripted, "traced": traced}.items():
    module.save(str(tmp_path / f"{name}.pt"))
    expected = torch.jit.load(str(tmp_path / f"{name}.pt")).state_dict()
    assert "blocks.layers.1.weight" in expected and "bn.num_batches_tracked" in expected
    _assert_same(torch_reader.load_torchscript_params(tmp_path / f"{name}.pt"), expected)


def test_wrong_reader_for_the_file_says_which_one_to_use(tmp_path):
  torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "script.pt"))
  torch.save({"w": torch.ones(1)}, tmp_path / "sd.pt")
  with pytest.raises(DataError, match="load_torchscript_params"):
    torch_reader.load_state_dict(tmp_path / "script.pt")
  with pytest.raises(DataError, match="use load_state_dict|read it with load_state_dict"):
    torch_reader.load_torchscript_params(tmp_path / "sd.pt")


class _Exploit:
  """Unpickling this runs `os.system(command)`: what a malicious checkpoint does to torch.load."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


@pytest.mark.parametrize("layout", ["zip", "torchscript_zip", "legacy_pickle"])
def test_malicious_pickle_is_refused_without_running_anything(tmp_path, layout):
  marker = tmp_path / "pwned"
  payload = pickle.dumps({"weight": _Exploit(f"touch {marker}")}, protocol=2)
  path = tmp_path / "evil.pt"
  if layout == "legacy_pickle":
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + payload)
  else:
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("evil/data.pkl", payload)
      zf.writestr("evil/version", "3\n")
      if layout == "torchscript_zip":
        zf.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        zf.writestr("evil/code/__torch__.py", "class M(Module):\n  __parameters__ = []\n")
  load = torch_reader.load_torchscript_params if layout == "torchscript_zip" else torch_reader.load_state_dict
  with pytest.raises(torch_reader.UnsafeCheckpointError, match=r"refusing to unpickle (posix|nt)\.system"):
    load(path)
  assert not marker.exists()
  # The payload is live: plain pickle would have run it.
  pickle.loads(payload)
  assert marker.exists()


def test_out_of_bounds_tensor_geometry_is_refused(tmp_path):
  torch.save({"w": torch.arange(4.0)}, tmp_path / "ok.pt")
  # Rewrite the pickle so the tensor claims 1000 elements of a 4-element storage.
  with zipfile.ZipFile(tmp_path / "ok.pt") as src, zipfile.ZipFile(tmp_path / "bad.pt", "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      if info.filename.endswith("data.pkl"):
        data = data.replace(b"K\x04\x85", b"M\xe8\x03\x85")  # size (4,) -> (1000,)
      dst.writestr(info.filename.replace("ok/", "bad/"), data)
  with pytest.raises(DataError, match="past the end"):
    torch_reader.load_state_dict(tmp_path / "bad.pt")


def test_missing_unreadable_and_unsupported_files_name_the_path(tmp_path):
  with pytest.raises(DataError, match="nowhere.pt does not exist"):
    torch_reader.load_state_dict(tmp_path / "nowhere.pt")
  (tmp_path / "notes.txt").write_text("not a checkpoint")
  with pytest.raises(DataError, match="notes.txt is not a PyTorch checkpoint"):
    torch_reader.load_state_dict(tmp_path / "notes.txt")
  torch.save({"w": torch.randn(64, 64)}, tmp_path / "full.pt")
  (tmp_path / "truncated.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:3000])
  with pytest.raises(DataError, match="truncated.pt"):
    torch_reader.load_state_dict(tmp_path / "truncated.pt")
  # torch's pre-0.4 tar format: refused, with how to re-save it.
  with tarfile.open(tmp_path / "old.tar.pt", "w") as tar:
    tar.add(tmp_path / "notes.txt", arcname="sys_info")
  with pytest.raises(DataError, match=r"tar checkpoint format.*torch\.save\(sd, path\)"):
    torch_reader.load_state_dict(tmp_path / "old.tar.pt")
