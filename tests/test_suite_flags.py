"""The suite's compiler settings (tests/conftest.py): LLVM -O0 for every program; the library's programs back at
-O1 in tests marked `optimised`, and only there."""

import os

import pytest

from facegen_jax import compile as compile_lib
from tests.conftest import TEST_XLA_FLAGS


def test_the_suite_compiles_at_o0():
  assert TEST_XLA_FLAGS == "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
  assert all(flag in os.environ["XLA_FLAGS"].split() for flag in TEST_XLA_FLAGS.split())
  assert "xla_backend_optimization_level" not in compile_lib.compiler_options("cpu")


@pytest.mark.optimised
def test_a_marked_test_gets_o1_for_the_librarys_programs():
  assert compile_lib.compiler_options("cpu")["xla_backend_optimization_level"] == 1
  assert compile_lib.compiler_options("cpu", run_once=True) == compile_lib.CPU_FAST_COMPILE_OPTIONS  # still -O0


def test_the_mark_is_undone_after_the_test():
  assert "xla_backend_optimization_level" not in compile_lib.CPU_COMPILER_OPTIONS
