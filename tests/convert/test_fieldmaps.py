"""Which sidecars carry a usable ShimSetting (the ground for a field map's IntendedFor)."""

from __future__ import annotations

import pytest

from t2starmap.convert.fieldmaps import shim_of


@pytest.mark.parametrize(
    ("meta", "shim"),
    [
        ({"ShimSetting": [-2204, 1453, 3300, 186]}, (-2204.0, 1453.0, 3300.0, 186.0)),
        ({"ShimSetting": [1.5, 2]}, (1.5, 2.0)),
        ({}, None),
        ({"ShimSetting": []}, None),
        ({"ShimSetting": "1 2 3"}, None),
        ({"ShimSetting": [1, "2"]}, None),
        ({"ShimSetting": [True, False]}, None),
    ],
)
def test_shim_of(meta, shim):
    assert shim_of(meta) == shim
