"""The numbers of the Levenberg-Marquardt policy, torch-free: both engines of the Gaussian
decay fit read them from here (:mod:`t2starmap.fit.solver` with :mod:`t2starmap.fit.models`,
and :mod:`t2starmap.fit.decay_cpu`), so that the two cannot drift apart. What each number means
is said in :mod:`t2starmap.fit.solver` (the tolerance, the damping, the rounding level) and
:mod:`t2starmap.fit.models` (the bounds)."""

from __future__ import annotations

from t2starmap.fit.limits import T2STAR_MIN

#: Relative step below which a voxel stops. Chosen with ``python benchmarks/tune_fit.py``:
#: speed against the change of R2* in units of its standard error (its table is the record).
TOL = 1e-3
LAMBDA_START = 1e-3
LAMBDA_MIN, LAMBDA_MAX = 1e-9, 1e9
#: A cost below this fraction of the data's energy is at rounding level.
ROUNDING = 1e-10
#: Largest R2* (1/s) a step may reach; the reported maps clamp at 1/T2STAR_MIN.
R2_MAX = 10.0 / T2STAR_MIN
#: Bound on the amplitude (in units of each voxel's largest sample; squared for the
#: noise-aware fit) of a trial step: it keeps every sum finite in float32. Real fits sit far
#: below it.
AMPLITUDE_MAX = 1e8
#: Iteration cap of the magnitude fits (plain and corrected). From the weighted log-linear start
#: simulated decays converge within 10 steps, and the cap costs nothing there (the voxels still
#: iterating are gathered); real decays that misfit converge slowly: on the GE kidney 4.6 % of
#: the mask was unconverged after 10 steps (their R2* up to 20 % off at the 99th percentile),
#: 1.6 % after 20, for 1.45x the fit's time there.
MAGNITUDE_MAX_ITER = 20
