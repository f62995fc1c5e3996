"""Reference alignment payload of the FASER tracker-alignment campaign.

Stands in for Calypso's reconstruction (one job per raw file, writing track
residuals and derivatives to ``2kfalignment/kfalignment_NNNNN.npz``) and for
Millepede (one job per iteration, writing ``millepede.res`` and the next
``inputforalign.txt``), on a toy 3- or 4-station tracker with a known injected
misalignment.

Staged on the batch site as a package named ``faser_reference`` and run as
``python -m faser_reference.reco ...`` / ``python -m faser_reference.millepede
...``; imported locally as ``batchsite.include.faser_reference``. Only numpy
(>= 1.24) and the standard library, and only relative imports inside the
package. See README.md.

``reco`` and ``millepede`` are deliberately not imported here so that
``python -m faser_reference.<module>`` does not find its module pre-imported.
"""

from .constants import (  # noqa: F401
    ConstantsError,
    format_constants,
    read_constants,
    read_res,
    write_constants,
)
from .geometry import (  # noqa: F401
    SIGMA,
    TRUTH_SEED,
    Geometry,
    constraint_matrix,
    make_label,
    remove_global_modes,
    rms_modulo_global_modes,
    true_misalignment,
)
