"""File staging between this machine and a site: code and scripts up, outputs and logs down.

No Airflow here. The package, by concern:

* ``paths``: path guards (absolute, normalised, inside remote_root; plain relative names;
  globs -> anchored EREs) and the error classes;
* ``manifest``: the local tree (files, sizes, sha256, the hash cache);
* ``transfer`` + ``transfer.sh``: push (rsync, or the tar protocol) / pull / put / read over
  ``Transport.sh`` and ``Transport.ssh_client`` (the header of ``transfer.sh`` is the site-side spec);
* ``file_management``: ``Staging``, the group's ``file_management.py`` on a ``Site``; the RG
  layout it pulls lives with the campaign (``batchsite.campaign.rg_layout``).

Needs on the site: POSIX sh, awk, tar, and GNU coreutils/findutils (``realpath -m``, ``sha256sum``,
``xargs -d``, ``find -printf``), i.e. any Linux batch site. Pushes go through ``rsync`` (over ssh
with the transport's own settings) where this machine and the site both have it, else through the
tar protocol (``PushReport.method`` / ``fallback_reason`` say which and why).

The seed-compatible command line resolves a site connection id, so it is an adapter and
lives on the Airflow side of the wall (``batchsite.hooks.staging_cli``)::

    python -m batchsite.hooks.staging_cli --action push --code source --scripts Taskfarm/scripts
    python -m batchsite.hooks.staging_cli --action pull --pull hist --version v1 --type FP --sys linux
"""

from batchsite.staging.file_management import Staging, payload_dir
from batchsite.staging.manifest import (
    SKIP_DIRS, SKIP_SUFFIXES, STAGE_PREFIX, HashCache, LocalEntry, default_cache_file, local_manifest,
)
from batchsite.staging.paths import (
    StagingError, StagingInputError, UnsafePathError, check_remote_path, check_remote_root, glob_to_ere,
)
from batchsite.staging.transfer import (
    LocalDiskFullError, PullReport, PushReport, RemoteDiskFullError, pull_tree, push_tree, put_text, read_text,
)

__all__ = [
    "SKIP_DIRS", "SKIP_SUFFIXES", "STAGE_PREFIX", "HashCache", "LocalDiskFullError", "LocalEntry", "PullReport",
    "PushReport", "RemoteDiskFullError", "Staging", "StagingError", "StagingInputError", "UnsafePathError",
    "check_remote_path", "check_remote_root", "default_cache_file", "glob_to_ere", "local_manifest", "payload_dir",
    "pull_tree", "push_tree", "put_text", "read_text",
]
