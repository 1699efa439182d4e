"""Keep ``import timm`` working when torchvision's compiled ops cannot load.

Why this exists: on CPU-only machines where only a CPU build of torch can be installed, pip may
still resolve torchvision to a CUDA build (PyPI's default wheel). Its compiled extension then
fails to load, and ``import torchvision`` dies in ``torchvision._meta_registrations`` with
``operator torchvision::nms does not exist``. timm imports torchvision at start-up, so timm
fails too, although nothing here uses torchvision's compiled ops (nms, roi_align, ...).

The fix is narrow: a meta-path finder that, only when torchvision's ops really are missing,
replaces ``torchvision._meta_registrations`` (fake-tensor kernels for those same ops) with an
empty module. Everything else in torchvision imports as usual; calling one of its compiled ops
still raises, as it should. On a healthy install the finder does nothing.

Importing this module installs the finder (idempotent). ``vitprune_lite/__init__`` imports it,
and the project's environment also carries a one-line ``.pth`` file doing the same, so a bare
``import timm`` works in the project's kernel too.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

_TARGET = "torchvision._meta_registrations"


def torchvision_ops_available() -> bool:
    """True if torchvision's compiled operators are registered with torch.

    Only meaningful once ``torchvision.extension`` has tried to load them.
    """
    import torch

    return hasattr(torch.ops.torchvision, "nms")


class _EmptyModuleLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        module.__doc__ = "Empty stand-in installed by vitprune_lite.compat (torchvision ops missing)."


class _MetaRegistrationsFinder(importlib.abc.MetaPathFinder):
    """Hands out an empty ``torchvision._meta_registrations`` when the ops are missing."""

    stubbed = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET or torchvision_ops_available():
            return None
        type(self).stubbed = True
        return importlib.machinery.ModuleSpec(fullname, _EmptyModuleLoader())


def install() -> None:
    """Install the finder at the front of ``sys.meta_path`` (no-op if already there)."""
    if not any(isinstance(f, _MetaRegistrationsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MetaRegistrationsFinder())


def torchvision_was_stubbed() -> bool:
    """True if this process imported torchvision through the stand-in."""
    return _MetaRegistrationsFinder.stubbed


install()
