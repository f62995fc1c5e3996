"""Reference payload of the Chalker-Coddington real-space RG campaign.

Staged on the batch site as a package named ``source`` and run as
``python -m source.generate ...`` / ``python -m source.aggregate ...``;
imported locally as ``batchsite.include.rg_reference``. Only numpy (>= 1.24)
and the standard library are used, and only relative imports inside the
package. See README.md.

``generate`` and ``aggregate`` are deliberately not imported here so that
``python -m source.<module>`` does not find its module pre-imported.
"""

from .rg_unit import (  # noqa: F401
    Z_CLIP,
    draw_phases,
    hist_distance,
    initial_z,
    load_hist,
    rg_step,
    rg_transform,
    sample_t_from_hist,
    sample_z_from_hist,
    t_to_z,
    z_to_t,
    z_to_tr,
)
