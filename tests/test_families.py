"""The family contract (facegen_jax/families/__init__.py; the check is tests/contract.py): for the test doubles of
the shapes to come here (tests/family_doubles.py: no discriminator; two generators and four discriminators with a
frozen network; a frozen first stage with masks), and for every registered family in its own test file."""

import importlib

import pytest

from facegen_jax import families
from tests import contract
from tests import family_doubles


@pytest.fixture
def registered(monkeypatch):
  for name, module in family_doubles.DOUBLES.items():
    monkeypatch.setitem(families.FAMILIES, name, module)


@pytest.mark.parametrize("name", sorted(family_doubles.DOUBLES))
def test_family_keeps_the_contract(name, registered, tmp_path):
  contract.check(family_doubles.DOUBLES[name].get_config(), tmp_path)


def test_every_family_checks_the_contract_in_its_own_tests():
  checked = {}
  for module_name in contract.MODULES:
    module = importlib.import_module(module_name)
    assert callable(module.test_keeps_the_family_contract), module_name
    for name in module.CONTRACT_FAMILIES:
      assert name not in checked, (name, module_name, checked.get(name))
      checked[name] = module_name
  assert set(checked) == set(families.FAMILIES), set(families.FAMILIES) ^ set(checked)
