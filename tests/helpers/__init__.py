"""Helpers shared by test modules. Test modules import from here, never from a conftest.py:
a conftest is loaded by pytest under a name that depends on which directories are collected,
so ``from conftest import x`` works only in some collection orders."""
