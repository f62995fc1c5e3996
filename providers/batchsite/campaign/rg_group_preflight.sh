#!/bin/bash
# rg_group_preflight.sh: before an RG campaign in group mode submits anything, check on the
# site what the group's scripts need (batchsite.campaign.collect.group_preflight runs it).
#
# Usage: rg_group_preflight.sh CAMPAIGN_ENV_SCRIPT REPO_ROOT SCRIPTS_DIR VAR...
#   CAMPAIGN_ENV_SCRIPT  group.env_script, sourced as the jobs do (after the site's env_script,
#                        which the transport sources before every command); - for none
#   VAR...   environment variables that must be set then (those job_env does not set)
# Prints one `missing: <what and the fix>` line per problem; exit 0 either way (the caller
# turns the lines into one error naming them all).
set -u
campaign_env=$1 repo=$2 scripts=$3
shift 3
if [ "$campaign_env" != - ]; then
  if [ ! -f "$campaign_env" ]; then echo "missing: group.env_script $campaign_env does not exist on the site"
  else
    # shellcheck disable=SC1090
    . "$campaign_env" >/dev/null 2>&1 || echo "missing: sourcing group.env_script $campaign_env failed"
  fi
fi
[ -d "$repo/source" ] || echo "missing: $repo/source/ (group.repo_root must be the group's repository root)"
[ -f "$repo/constants.py" ] || echo "missing: $repo/constants.py (the group's root constants.py)"
[ -f "$repo/.venv/bin/activate" ] || echo "missing: $repo/.venv/bin/activate (the venv at the group's remote root)"
for s in rg_gen_batch.sh rg_hist_manager.sh gen_shifted_data.sh; do
  [ -f "$scripts/$s" ] || echo "missing: $scripts/$s (group.scripts_dir holds the group's Taskfarm scripts)"
done
type module >/dev/null 2>&1 || echo "missing: a 'module' command (off-cluster, put a no-op module on PATH in group.env_script)"
for v; do
  [ -n "${!v+set}" ] || echo "missing: environment variable $v (set it in group.job_env or group.env_script)"
done
exit 0
