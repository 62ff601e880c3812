"""FID/KID: the Inception network against the TorchScript original and pytorch-fid's own code, the weight
converter, the distances, the evaluate command.

Tests marked by `fid_weights.torchscript_path()` need the real weights (`python tests/get_fid_weights.py`);
they skip only when the file is absent. The rest use random weights or random features.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.linalg
from PIL import Image
from scipy import ndimage

from facegen_jax import errors
from facegen_jax import evaluate
from facegen_jax.convert import inception as convert_inception
from facegen_jax.convert.__main__ import main as convert_main
from facegen_jax.metrics import fid
from facegen_jax.metrics import inception
from input_pipeline import synthetic
from tests import fid_weights
from tests.conftest import REPO

pytestmark = pytest.mark.optimised  # Inception at 299 px: the features run long


def _faces(n=8, resolution=64):
  return np.stack([synthetic.render(0, i, resolution)["image"] for i in range(n)])


def _torchvision_state_dict(arrays, rng):
  """The .npz arrays under torchvision's Inception3 names: pytorch-fid's .pth format (fc has 1008 classes)."""
  sd = {}
  for name, value in arrays.items():
    kind, *path, module, leaf = name.split("/")
    key = ".".join(path)
    if module == "conv":
      sd[f"{key}.conv.weight"] = value.transpose(3, 2, 0, 1)
    else:
      sd[f"{key}.bn.{ {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}[leaf]}"] = value
  sd["fc.weight"] = rng.standard_normal((1008, 2048)).astype(np.float32) * 0.01
  sd["fc.bias"] = np.zeros(1008, np.float32)
  return sd


# --- no real weights needed ---


@pytest.mark.slow
@pytest.mark.parametrize("in_hw", [(17, 17), (64, 64), (40, 90), (299, 299), (512, 512), (333, 301)])
def test_resize_matches_torch_bilinear(in_hw):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).random((2, *in_hw, 3), np.float32)
  ours = np.asarray(inception.resize_bilinear(x))
  ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                                        mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
  assert ours.shape == (2, 299, 299, 3)
  # Source positions are float32 as in torch's kernel; 1 ulp of one (~2e-6 near 32) is the remaining difference.
  np.testing.assert_allclose(ours, ref, atol=5e-6, rtol=0)


def test_frechet_distance_matches_direct_formula():
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((500, 6)), rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6)) + 0.3
  mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
  # Tr sqrt(s1 s2) = Tr sqrt(r s2 r) with r = sqrt(s1), a symmetric PSD matrix: sum of sqrt of its eigenvalues.
  r = scipy.linalg.sqrtm(s1).real
  tr_covmean = np.sum(np.sqrt(np.linalg.eigvalsh(r @ s2 @ r)))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
  assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_singular_covariances_stay_finite():
  rng = np.random.default_rng(1)
  a, b = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 1  # rank 9 covariances of 64 dims
  stats = [fid.Statistics.of(x) for x in (a, b)]
  value = fid.fid(*stats)
  assert np.isfinite(value) and value > 60  # the means alone are 64 apart
  assert abs(fid.fid(stats[0], stats[0])) < 1e-3
  with pytest.raises(errors.DataError, match="do not match"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


@pytest.mark.parametrize("n", [5, 30, 64])
def test_fid_from_few_features_equals_frechet_distance(n):
  rng = np.random.default_rng(n)
  a, b = rng.standard_normal((n, 64)), rng.standard_normal((n + 3, 64)) * 1.5 + 0.2
  stats = [fid.Statistics.of(x) for x in (a, b)]
  expected = fid.frechet_distance(stats[0].mu, stats[0].sigma, stats[1].mu, stats[1].sigma)
  assert fid.fid(*stats) == pytest.approx(expected, rel=1e-6)


def test_polynomial_mmd2_matches_definition():
  rng = np.random.default_rng(2)
  x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
  k = lambda p, q: (p @ q / 3 + 1) ** 3
  m = len(x)
  within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  assert fid.polynomial_mmd2(x, y) == pytest.approx(within - 2 * cross, rel=1e-12)


def test_kid_is_unbiased_and_separates():
  rng = np.random.default_rng(3)
  a, b = rng.standard_normal((400, 32)), rng.standard_normal((400, 32))
  same_mean, same_std = fid.kid(a, b, num_subsets=50, subset_size=100)
  # The biased V-statistic (diagonals kept) of the same subsets is clearly positive; the unbiased one is ~0.
  x, y = a[:100], b[:100]
  k = lambda p, q: (p @ q.T / 32 + 1) ** 3
  biased = k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()
  assert abs(same_mean) < 0.1 * biased and abs(same_mean) < 3 * same_std
  shifted_mean, shifted_std = fid.kid(a, b + 0.5, num_subsets=50, subset_size=100)
  assert shifted_mean > 10 * shifted_std and shifted_mean > 10 * abs(same_mean)
  assert fid.kid(a, b, num_subsets=5, subset_size=50) == fid.kid(a, b, num_subsets=5, subset_size=50)


def test_kid_subset_larger_than_samples_names_the_option():
  a = np.zeros((30, 4))
  with pytest.raises(errors.ConfigError, match="lower --kid_subset_size to at most 30"):
    fid.kid(a, a, subset_size=1000, option="--kid_subset_size")


def test_statistics_roundtrip_and_pytorch_fid_files(tmp_path):
  features = np.random.default_rng(4).standard_normal((20, 8)).astype(np.float32)
  stats = fid.Statistics.of(features)
  stats.save(tmp_path / "s.npz")
  loaded = fid.Statistics.load(tmp_path / "s.npz")
  assert loaded.count == 20 and loaded.sigma.dtype == np.float64
  np.testing.assert_array_equal(loaded.mu, stats.mu)
  np.testing.assert_array_equal(loaded.sigma, np.cov(features.astype(np.float64), rowvar=False))
  np.testing.assert_array_equal(loaded.features, features)
  np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mu, sigma=stats.sigma)  # pytorch-fid's --save-stats format
  assert fid.Statistics.load(tmp_path / "pytorch_fid.npz").features is None
  np.savez(tmp_path / "other.npz", x=features)
  with pytest.raises(errors.DataError, match="not FID statistics"):
    fid.Statistics.load(tmp_path / "other.npz")


def test_extract_features_rebatches_and_pads(tmp_path):
  variables = inception.unflatten(fid_weights.write_random_weights(tmp_path / "w.npz"))
  x = np.random.default_rng(5).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
  whole = fid.extract_features(variables, [x], batch_size=4)
  pieces = fid.extract_features(variables, [x[:1], x[1:3], x[3:]], batch_size=3)
  direct = np.asarray(jax.jit(inception.InceptionV3().apply)(variables, x.astype(np.float32) / 255))
  assert whole.shape == (5, 2048) and np.isfinite(whole).all()
  np.testing.assert_allclose(pieces, whole, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(whole, direct, atol=1e-5, rtol=1e-5)


def test_converter_maps_every_name_format(tmp_path):
  arrays = fid_weights.write_random_weights(tmp_path / "w.npz")
  rng = np.random.default_rng(6)
  sd = _torchvision_state_dict(arrays, rng)
  sd.update({k.replace("running_mean", "num_batches_tracked"): np.int64(0) for k in sd if k.endswith("running_mean")})
  for converted in (convert_inception.convert_state_dict(sd),
                    convert_inception.convert_state_dict({f"blocks.{b}.{i}.{k.split('.', 1)[1]}": v
                                                          for k, v in sd.items() if not k.startswith("fc")
                                                          for b, layers in enumerate(convert_inception._WRAPPER_BLOCKS)
                                                          for i, layer in enumerate(layers)
                                                          if k.split(".", 1)[0] == layer})):
    assert converted.keys() == arrays.keys()
    for name in arrays:
      np.testing.assert_array_equal(converted[name], arrays[name], err_msg=name)
  # TorchScript names: TF graph layers, BatchNorm beta/mean/var without a scale (it is 1).
  ts = {}
  for layer, tf_name in convert_inception.tf_layer_names().items():
    path = layer.replace(".", "/")
    ts[f"net.layers.{tf_name}.weight"] = sd[f"{layer}.conv.weight"]
    ts[f"net.layers.{tf_name}.beta"] = arrays[f"params/{path}/bn/bias"]
    ts[f"net.layers.{tf_name}.mean"] = arrays[f"batch_stats/{path}/bn/mean"]
    ts[f"net.layers.{tf_name}.var"] = arrays[f"batch_stats/{path}/bn/var"]
  converted = convert_inception.convert_torchscript_params(ts)
  for name in arrays:
    expected = np.ones_like(arrays[name]) if name.endswith("bn/scale") else arrays[name]
    np.testing.assert_array_equal(converted[name], expected, err_msg=name)


def test_converter_errors():
  arrays = {name: np.zeros(shape, np.float32) for name, shape in inception.expected_shapes().items()}
  sd = _torchvision_state_dict(arrays, np.random.default_rng(0))
  with pytest.raises(errors.DataError, match="Mixed_6b.branch7x7_2.conv.weight is missing"):
    convert_inception.convert_state_dict({k: v for k, v in sd.items() if k != "Mixed_6b.branch7x7_2.conv.weight"})
  bad = dict(sd, **{"Mixed_7c.branch_pool.conv.weight": np.zeros((192, 2048, 3, 3), np.float32)})
  with pytest.raises(errors.DataError, match="Mixed_7c/branch_pool/conv/kernel has shape"):
    convert_inception.convert_state_dict(bad)
  with pytest.raises(errors.DataError, match="torchvision's ImageNet InceptionV3"):
    convert_inception.convert_state_dict(dict(sd, **{"fc.weight": np.zeros((1000, 2048), np.float32)}))
  with pytest.raises(errors.DataError, match="layers.conv.weight"):
    convert_inception.convert_torchscript_params({"conv.weight": np.zeros(1)})


@pytest.mark.slow
def test_convert_cli_reads_a_pth_and_reports_errors(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  arrays = fid_weights.write_random_weights(tmp_path / "w.npz")
  sd = _torchvision_state_dict(arrays, np.random.default_rng(7))
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "pt_inception.pth")
  pth, out = str(tmp_path / "pt_inception.pth"), str(tmp_path / "o.npz")
  assert convert_main(["inception", "--from", pth, "--out", out]) == 0
  loaded = inception.load_params(tmp_path / "o.npz")
  for name, value in inception.flatten(loaded).items():
    np.testing.assert_array_equal(value, arrays[name], err_msg=name)
  assert convert_main(["inception", "--from", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x.npz")]) == 2
  assert "missing.pth does not exist" in capsys.readouterr().err


def test_load_params_errors(tmp_path):
  with pytest.raises(errors.DataError, match="python -m facegen_jax.convert inception"):
    inception.load_params(tmp_path / "none.npz")
  arrays = {name: np.zeros(shape, np.float32) for name, shape in inception.expected_shapes().items()}
  arrays["params/Mixed_5b/branch_pool/conv/kernel"] = np.zeros((1, 1, 192, 64), np.float32)
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(errors.DataError, match=r"Mixed_5b/branch_pool/conv/kernel is of shape \(1, 1, 192, 64\)"):
    inception.load_params(tmp_path / "bad.npz")


def _write_pngs(folder, images):
  folder.mkdir(parents=True, exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f"{i:03d}.png")
  return folder


@pytest.mark.slow
def test_evaluate_errors(tmp_path):
  fid_weights.write_random_weights(tmp_path / "w.npz")
  good = _write_pngs(tmp_path / "good", _faces(2, 32))
  (tmp_path / "empty").mkdir()
  corrupt = _write_pngs(tmp_path / "corrupt", _faces(2, 32))
  (corrupt / "000.png").write_bytes(b"not a png")
  cases = [(tmp_path / "nope", good, tmp_path / "w.npz", "does not exist"),
           (good, tmp_path / "empty", tmp_path / "w.npz", "holds no images"),
           (good, good, tmp_path / "none.npz", "convert inception"),
           (corrupt, good, tmp_path / "w.npz", "cannot read image .*000.png")]
  for real, fake, weights, message in cases:
    with pytest.raises(errors.UserError, match=message):
      evaluate.run(str(real), str(fake), str(weights), with_kid=False)
  result = subprocess.run([sys.executable, "-m", "facegen_jax.evaluate", "--real", str(good), "--fake",
                           str(tmp_path / "empty"), "--inception", str(tmp_path / "w.npz")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("facegen_jax.evaluate: error:")
  assert "holds no images" in result.stderr


# --- real weights ---


@pytest.fixture(scope="module")
def real_weights(tmp_path_factory):
  """{"torchscript": default_1.pt, "b": .npz converted from it, "a": .npz from its tensors saved as a .pth}."""
  torchscript = fid_weights.torchscript_path()
  tmp = tmp_path_factory.mktemp("fid_weights")
  assert convert_main(["inception", "--from", str(torchscript), "--out", str(tmp / "b.npz")]) == 0
  paths = {"torchscript": torchscript, "b": tmp / "b.npz"}
  torch = pytest.importorskip("torch")
  arrays = inception.flatten(inception.load_params(tmp / "b.npz"))
  sd = _torchvision_state_dict(arrays, np.random.default_rng(8))
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp / "pt_inception-2015-12-05.pth")
  assert convert_main(["inception", "--from", str(tmp / "pt_inception-2015-12-05.pth"), "--out",
                       str(tmp / "a.npz")]) == 0
  paths["a"], paths["pth"] = tmp / "a.npz", tmp / "pt_inception-2015-12-05.pth"
  return paths


@pytest.fixture(scope="module")
def face_features(real_weights):
  faces = _faces(8, 64)
  return faces, fid.extract_features(inception.load_params(real_weights["b"]), [faces], batch_size=8)


@pytest.mark.slow
def test_features_finite_deterministic_and_same_from_both_formats(real_weights, face_features):
  faces, features = face_features
  a, b = inception.load_params(real_weights["a"]), inception.load_params(real_weights["b"])
  flat_a, flat_b = inception.flatten(a), inception.flatten(b)
  assert flat_a.keys() == flat_b.keys()
  for name in flat_a:
    np.testing.assert_array_equal(flat_a[name], flat_b[name], err_msg=name)
  assert features.shape == (8, 2048) and np.isfinite(features).all() and features.min() >= 0
  again = fid.extract_features(a, [faces], batch_size=8)
  np.testing.assert_array_equal(again, features)


@pytest.mark.slow
def test_features_match_torchscript_model(real_weights, face_features):
  torch = pytest.importorskip("torch")
  faces, features = face_features
  # The archive's forward is the bare network: NCHW at 299x299 in [-1, 1], pool3 (N, 2048) out.
  model = torch.jit.load(str(real_weights["torchscript"]), map_location="cpu").eval()
  with torch.no_grad():
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(255)
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    ref = model(2 * x - 1).numpy()
  assert np.abs(features - ref).max() < 1e-4


@pytest.mark.slow
def test_fid_zero_for_same_images_and_grows_with_noise_and_blur(real_weights, face_features):
  faces, features = face_features
  variables = inception.load_params(real_weights["b"])
  rng = np.random.default_rng(9)
  x = faces.astype(np.float32) / 255
  noisy = [np.clip(x + s * rng.standard_normal(x.shape, np.float32), 0, 1) for s in (0.05, 0.2)]
  blurred = [ndimage.gaussian_filter(x, sigma=(0, s, s, 0)) for s in (1.0, 2.5)]
  stats = fid.Statistics.of(features)
  values = [fid.fid(stats, fid.Statistics.of(fid.extract_features(variables, [v], batch_size=8)))
            for v in noisy + blurred]
  assert abs(fid.fid(stats, stats)) < 1e-2
  assert 10 < values[0] < values[1] and 10 < values[2] < values[3]


@pytest.mark.slow
def test_matches_pytorch_fid(real_weights, face_features, tmp_path, monkeypatch):
  """pytorch-fid's own InceptionV3 and `calculate_fid_given_paths` (torchvision replaced by a stand-in)."""
  torch = pytest.importorskip("torch")
  from tests import torchvision_standin  # pylint: disable=g-import-not-at-top
  for name, module in torchvision_standin.modules().items():
    monkeypatch.setitem(sys.modules, name, module)
  monkeypatch.syspath_prepend(str(fid_weights.pytorch_fid_dir()))
  for name in [m for m in sys.modules if m.startswith("pytorch_fid")]:
    monkeypatch.delitem(sys.modules, name)
  import pytorch_fid.fid_score  # pylint: disable=g-import-not-at-top
  import pytorch_fid.inception  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url",
                      lambda url, progress=True: torch.load(real_weights["pth"]))
  faces, features = face_features
  model = pytorch_fid.inception.InceptionV3([3]).eval()
  with torch.no_grad():
    ref = model(torch.from_numpy(faces).permute(0, 3, 1, 2).float().div(255))[0].squeeze(3).squeeze(2).numpy()
  assert np.abs(features - ref).max() < 1e-4

  real = _write_pngs(tmp_path / "real", faces)
  rng = np.random.default_rng(10)
  fake = _write_pngs(tmp_path / "fake", np.clip(faces + rng.normal(0, 20, faces.shape), 0, 255).astype(np.uint8))
  expected = pytorch_fid.fid_score.calculate_fid_given_paths([str(real), str(fake)], 8, "cpu", 2048, num_workers=0)
  result = subprocess.run([sys.executable, "-m", "facegen_jax.evaluate", "--real", str(real), "--fake", str(fake),
                           "--inception", str(real_weights["b"]), "--batch_size", "8", "--kid_subset_size", "4",
                           "--kid_subsets", "10"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("FID: "))
  assert float(line.split()[1]) == pytest.approx(expected, rel=1e-3)
  assert any(l.startswith("KID: ") for l in result.stdout.splitlines())
