#!/bin/bash
# aligndb_copy.sh, head (stand-in template): runs in the job's work dir, after the job
# copied ALLP200.db to data/sqlite200/. The job appends the line
#   python WriteAlignmentConfig_Faser04.py 'AlignDbTool.AlignmentConstants={...}' >& writeAlignment_Faser04.log
# and then the tail template.
set -euo pipefail
test -f data/sqlite200/ALLP200.db || { echo "aligndb_copy.sh: data/sqlite200/ALLP200.db missing" >&2; exit 1; }
rm -f Alignment_Faser04.pool.root data/poolcond/Alignment_Faser04.pool.root
