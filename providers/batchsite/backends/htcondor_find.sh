#!/bin/sh
# Looks for the DAGMan job of an HTCondor round by its batch name (rendered by
# batchsite.backends.htcondor.render_find_by_batch_name_script; htcondor_parse.parse_find_by_batch_name
# reads what it prints). Site.submit runs it when a submission left a lock but no record
# (submit_once.sh's header): the DAG may be queued, or may already have finished and left the
# queue. Needs bs_run (run_helper.sh) before it. Inputs (set below this header):
#   $mark    the section marker (batchsite.backends.common.SECTION)
#   $key     the round key: the -batch-name of its DAGMan job
#   $schedd  the schedd to ask (the site connection's `schedd` extra), "" for the default one
#   $lock    the round's lock owner file (`<host> <pid> <epoch>`, submit_once.sh); "" or absent:
#            the history is searched over 30 days
#   $dagman_out  DAGMan's log of this DAG in the round's workdir ("" to skip the files section's lines)
#
# Sections:
#   find <key>      condor_q: DAGMan jobs (universe 7) named <key>, `ClusterId GlobalJobId`
#   findhist <key>  condor_history, the same, for DAGs that already left the queue; bounded by
#                   -completedsince (the lock's epoch less 1 h of clock skew between login
#                   node and schedd; 30 days without one), which stops the backwards scan of
#                   the history file at the first older job: cheap on a busy schedd
#   files <key>     `dagman-out` when DAGMan ran in the workdir, then `batch-id <cluster>` for
#                   each run its log records ("Workflow batch-id: <N.0>") and `start` for each
#                   "STARTING UP" (HTCondor versions without the batch-id line)
: "${mark:?}" "${key:?}" "${schedd?}" "${lock?}" "${dagman_out?}"

bs_condor() {  # TOOL ARGS...: the tool run by bs_run, asking $schedd when one is set
  tool=$1; shift
  if [ -n "$schedd" ]; then bs_run "$tool" -name "$schedd" "$@"; else bs_run "$tool" "$@"; fi
}

constraint="JobBatchName == \"$key\" && JobUniverse == 7"
echo "$mark find $key"
bs_condor condor_q -constraint "$constraint" -af ClusterId GlobalJobId

since=
if [ -n "$lock" ] && [ -f "$lock" ]; then read -r _host _pid since < "$lock"; fi
case ${since:-x} in
  *[!0-9]*) since=$(( $(date +%s) - 30 * 86400 )) ;;
  *) since=$((since - 3600)) ;;
esac
echo "$mark findhist $key"
bs_condor condor_history -constraint "$constraint" -completedsince "$since" -af ClusterId GlobalJobId

echo "$mark files $key"
if [ -n "$dagman_out" ] && [ -f "$dagman_out" ]; then
  echo dagman-out
  sed -n -e 's/.*Workflow batch-id: <\([0-9][0-9]*\)\..*/batch-id \1/p' -e '/STARTING UP/s/.*/start/p' "$dagman_out"
fi
