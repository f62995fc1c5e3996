# shellcheck shell=bash
# aligndb_copy.sh, tail (stand-in template): fail if the writer failed, move the POOL file
# into data/poolcond/ and check the folder with AtlCoolConsole.py.
test -s Alignment_Faser04.pool.root || { echo "aligndb_copy.sh: WriteAlignmentConfig_Faser04.py wrote nothing; see writeAlignment_Faser04.log" >&2; cat writeAlignment_Faser04.log >&2 || true; exit 1; }
mkdir -p data/poolcond
mv -f Alignment_Faser04.pool.root data/poolcond/
AtlCoolConsole.py "sqlite://;schema=data/sqlite200/ALLP200.db;dbname=CONDBR3" <<'COOL'
more /Tracker/Align
exit
COOL
