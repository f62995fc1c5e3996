#!/bin/sh
# submit.sh of an HTCondor round (rendered by batchsite.backends.htcondor.render_submit_script).
#
# Runs with cwd = the round's workdir, which holds the DAG and its submit files. Inputs (the
# rendered copy sets them below this header; run alone: `key=bs-r1 dag=bs-r1.dag
# node_status=bs-r1.status metrics=bs-r1.dag.metrics dirs='logs status' options= schedd=
# fanin_node=fanin sh htcondor_submit.sh`):
#   $key          the round key: the DAGMan job's -batch-name (how a lost submission is found)
#   $dag          the DAG file; $node_status, $metrics: the files DAGMan writes beside it
#   $dirs         the directories the jobs write into (logs, exit files), made first
#   $options      condor_submit_dag throttles, e.g. "-maxidle 100" ("" for none)
#   $schedd       the schedd to submit to (the site connection's `schedd` extra), "" for the
#                 login node's default. condor_submit_dag has no -name, and -remote implies
#                 -spool (DAGMan's files would leave this directory): _CONDOR_SCHEDD_HOST it is
#   $fanin_node   the fan-in node's name, "" when the DAG has none
#
# Without -f: submitting the same DAG again after a failure runs its rescue DAG, so only the
# failed nodes run again; the previous run's node status and metrics files are moved aside
# first, so a poll never reads the last run's outcome as this run's.
#
# Prints condor_submit_dag's stdout, then `dagman=<cluster> schedd=<name>[ fanin=<node>]`
# (htcondor_parse.parse_submit reads it). The schedd name is the DAGMan job's GlobalJobId up
# to its first '#' (lxplus maps users to many schedds; every later query names it). Exits 1
# when the DAG could not be submitted.
set -u
: "${key:?}" "${dag:?}" "${node_status:?}" "${metrics:?}" "${dirs:?}" "${options?}" "${schedd?}" "${fanin_node?}"
if [ -n "$schedd" ]; then _CONDOR_SCHEDD_HOST=$schedd; export _CONDOR_SCHEDD_HOST; fi
# shellcheck disable=SC2086 # $dirs is a list of directory names without blanks
mkdir -p $dirs || exit 1
for f in "$node_status" "$metrics"; do [ -f "$f" ] && mv -f "$f" "$f.prev"; done
# shellcheck disable=SC2086 # $options is a list of flags ("-maxidle 100"), one word each
out=$(condor_submit_dag -batch-name "$key" $options "$dag"); rc=$?
printf '%s\n' "$out"
if [ "$rc" -ne 0 ]; then echo "batchsite: condor_submit_dag exited $rc" >&2; exit 1; fi
c=$(printf '%s\n' "$out" | sed -n 's/.*submitted to cluster \([0-9][0-9]*\)\..*/\1/p' | tail -n 1)
[ -n "$c" ] || { echo "batchsite: no cluster id in the output of condor_submit_dag" >&2; exit 1; }
# the schedd that holds the DAG: GlobalJobId is <schedd>#<cluster>.<proc>#<time>
s=$(condor_q "$c" -af GlobalJobId 2>/dev/null | sed -n '1s/#.*//p')
[ -n "$s" ] || s=$(condor_config_val SCHEDD_HOST 2>/dev/null) || s=
echo "dagman=$c schedd=$s${fanin_node:+ fanin=$fanin_node}"
