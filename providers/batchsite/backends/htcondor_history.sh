# shellcheck shell=sh
# htcondor_history.sh: `bs_history_constraint CLUSTER NODE_STATUS_FILE` prints the condor_history
# constraint of one DAG for the status script (batchsite.backends.htcondor.render_status_script).
#
# Why: when the DAG has left the queue, the history of EVERY node job (10,000 ads, 5 MB of JSON
# at 10,000 units) would travel and be parsed, although the node status file already says which
# nodes are done. The history is read for the DAGMan job itself and for the nodes that are not
# STATUS_DONE (5) there: those whose removal, hold or exit the parser explains. With no readable
# node status file, or more than 1000 such nodes, every node job is asked for, as before.
# POSIX sh + awk; node names are DAG node names (no quotes or spaces).
bs_history_constraint() {
  if [ ! -r "$2" ]; then printf 'ClusterId == %s || DAGManJobId == %s' "$1" "$1"; return 0; fi
  awk -v c="$1" 'BEGIN { n = 0 }
    /^ *Node = "/ { node = $0; sub(/^ *Node = "/, "", node); sub(/".*$/, "", node) }
    /^ *NodeStatus = / {
      s = $3; sub(/;.*$/, "", s)
      if (s != "5") { if (n < 1000) left[n] = node; n++ }
    }
    END {
      if (NR == 0 || n > 1000) { printf "ClusterId == %s || DAGManJobId == %s", c, c; exit }
      printf "ClusterId == %s", c
      if (n > 0) {
        printf " || (DAGManJobId == %s && member(DAGNodeName, {", c
        for (i = 0; i < n; i++) printf "%s\"%s\"", (i ? "," : ""), left[i]
        printf "}))"
      }
    }' "$2"
}
