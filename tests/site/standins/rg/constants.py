"""Stand-in of the RG group's root ``constants.py``: project paths from the environment.

Written from the contract in issue 12. Importing it fails (RuntimeError naming the missing
variables) unless the seven variables the group's module requires are set:
DATA_DIR LOCAL_DIR ROOT_DIR TASKFARM_DIR HOST REMOTE_DIR CONFIG_FILE.
"""

from __future__ import annotations

import os

REQUIRED = ["DATA_DIR", "LOCAL_DIR", "ROOT_DIR", "TASKFARM_DIR", "HOST", "REMOTE_DIR", "CONFIG_FILE"]
missing_vars = [name for name in REQUIRED if name not in os.environ]
if missing_vars:
    raise RuntimeError(f"STANDIN CONTRACT VIOLATION: missing required env vars: {missing_vars}")

data_dir = os.environ["DATA_DIR"]
local_dir = os.environ["LOCAL_DIR"]
root_dir = os.environ["ROOT_DIR"]
taskfarm_dir = os.environ["TASKFARM_DIR"]
host = os.environ["HOST"]
remote_dir = os.environ["REMOTE_DIR"]
config_file = os.environ["CONFIG_FILE"]

Z_RANGE = 25.0
Z_BINS = 1000
T_BINS = 1000
