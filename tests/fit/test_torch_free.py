"""The rooms of fit/ that the command line, the layout and the pages read load no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

TORCH_FREE = (
    "t2starmap.fit",
    "t2starmap.fit.limits",
    "t2starmap.fit.status",
    "t2starmap.fit.stats",
    "t2starmap.fit.lm_policy",
    "t2starmap.fit.decay_cpu",
    "t2starmap.fit.bold",
    "t2starmap.fit.bold_refit",
)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_importing_the_module_loads_no_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"{module} loads torch on import"


def test_the_chi_square_quantile_still_loads_torch_when_called() -> None:
    from t2starmap.fit.stats import chi2_upper

    assert chi2_upper(10, 0.05) == pytest.approx(18.307, abs=1e-3)
