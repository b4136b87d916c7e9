"""Each command's line in `hoard --help`, kept here so that listing the commands loads none
of them (hoardfs.cli.LazyGroup). Written by `make summaries` (hoardfs.cli.write_summaries) from the
commands themselves; tests/test_cli_help.py fails when it is out of date."""

from __future__ import annotations

SUMMARIES: dict[str, str] = {'put': 'Store files: prints sha256, new/existing and replicas now/target per file, as each is stored.',
 'get': 'Read an object back, verified piece by piece, from the best healthy replicas.',
 'replicate': 'Copy shards below their replica target (copy_of_raw / copy_of_generated).',
 'info': 'Everything known about one object: size, type, replicas and disks, batches and original\n'
         'paths, metadata and labels (from the database when it is reachable), mount paths.',
 'ls': "The ingested batches (id, source, files, size, when), or one batch's files (sha256, size, path),\n"
       'or (`--puts`) the named puts: name, when, count, bytes.',
 'select': 'Select nodes from the database: flags, or a selector file (`--file`). Prints sha256 and\n'
           'size per node; `--view` prints a view manifest (`hoard select … --view | hoard view add NAME '
           '-`).',
 'verify': "Check replicas (xxh3-128, footers; --sha256 too), oldest-verified first, and every disk's marks "
           'log.',
 'check': 'Do the index, the shards on the disks and the database agree? Names each disagreement.',
 'rebuild': 'Re-create the replicas a lost disk held, from healthy replicas; resumable after a kill.\n'
            'Afterwards `hoard disks forget DISK` and remove its [[disks]] table from hoard.toml.',
 'ingest': 'Ingest scraped batches: scan → store → database → 3B package → remove from 3A.',
 'stage': 'Stage nodes into zone 3C for a worker: `3C/<id>/<layout>/input/…` and an empty `output/`.',
 'export': 'Export a selection into zone 3D in a layout: `3D/<id>/<layout>/…` (see `hoard stage`).',
 'mount': 'Mount the store read-only: by-hash/, batches/, sources/, views/, .hoard/health, inbox → 3A.',
 'umount': 'Unmount a hoard mount (fusermount3 -u; --lazy when readers are still busy or its daemon died).',
 'delete': 'Delete: type A hides nodes (bytes stay), type B drops a batch or releases what `hoard put`\n'
           'stored (`hoard gc` frees the bytes no batch, view, job or database row still uses).',
 'gc': 'Compact shards holding deleted objects and free their space (resumable; reserves space first).',
 'gui': 'Serve the scheduler and dashboards (NiceGUI) until interrupted.',
 'init': 'Create the directories the configuration names (idempotent).',
 'health': "Status of disks (with their drives' SMART), SSD zones, PostgreSQL and Redis; exit 4 if anything "
           'needs attention.',
 'worker': "Run an RQ worker on the hoardfs queues, with RQ's scheduler (a waiting action run's poll\n"
           'is a scheduled job: nothing holds a worker while it waits). It heartbeats every\n'
           "`[worker] heartbeat_s`; on the store's server it also runs the reaper, which queues again\n"
           'a job whose worker went silent (docs/scale-out.md). In the embedded default (no\n'
           'hoard-replicate.timer) it queues the replicate job every `[worker] replicate_every_s`.\n'
           'SIGTERM or Ctrl-C: an idle worker stops within 3 s (a job it took meanwhile runs first), a\n'
           'busy one once its job is done, its Redis gone or not; a second signal kills the job at\n'
           'once. Its scheduler process is given 10 s to stop, then killed. An idle worker whose Redis\n'
           'stops answering (or leaves a reply 30 s late) retries it every 2 s, saying so once a\n'
           'minute, or ends; a signal stops one that retries too — either way with the line that names\n'
           'that Redis (exit 3), as does a busy one once its job is done; a Redis that refuses writes\n'
           '(a read-only replica) is said so the same way. A worker never exits 0 on an error. A scheduler '
           'that a lost Redis\n'
           "ended is started again once Redis is back: within 12 s, or at a busy worker's next\n"
           'heartbeat.',
 'demo': 'The main job on the embedded default (grows as the issues land).',
 'services': 'Start, stop and show the private PostgreSQL and Redis (embedded default).',
 'fixtures': 'Deterministic test and benchmark data.',
 'disks': "The HDDs: list, add, retire, replace, activate, forget; their drives' SMART.",
 'db': 'The PostgreSQL database: migrate, status, backup, verify-backup, restore, proposals.',
 'index': 'The LMDB index: rebuild it from the shards on the disks.',
 'zones': 'The SSD zones: quota, used, reserved, free, state, reservations and outputs; `clean ID` removes a '
          'sealed output.',
 'users': 'Who may sign in to `hoard gui`: add, passwd, rm, list, hash.',
 'tokens': 'Upload tokens of remote scrapers (HTTP ingest): add, list, rm.',
 'label': 'Labels on nodes, by hand: `hoard label add|rm KEY[=VALUE] (--nodes FILE | --selector FILE | '
          'SHA256 …)`; `hoard select --label KEY=VALUE` and by_label layouts see them.',
 'view': 'Named views: a manifest of path → sha256 shown under `<mount>/views/NAME`.',
 'action': 'ActionContracts (UA_2): `hoard action list`, `show NAME`, `validate FILE`, `run NAME`, `resume '
           'RUN`, `status RUN`, `runs`, `release RUN`, `collect RUN`, `cancel RUN` (docs/actions.md).',
 'pipeline': 'Pipelines: ordered stages of actions a batch goes through (docs/actions.md).',
 'dataset': 'Training datasets from a spec (docs/datasets.md): `hoard dataset build SPEC` makes version N+1 '
            'in `3D/<name>-v<N>/`; list, show, diff, materialize and rm the versions.',
 'labelstudio': 'Start, stop and show a Label Studio on this host for the `label-studio` action (`make '
                'labelstudio` installs it).',
 'events': 'The newest events, newest first: batch_ingested, run_finished, run_failed, gate_waiting,\n'
           'dataset_built, disk_failed (kept 90 days).',
 'webhooks': "Webhooks: the configured ones, each delivery's tries, and queueing the overdue again.",
 'dups': "Near-duplicate groups, one a line: the members' sha256s, largest group first. Images are\n"
         "near-duplicates when their pHashes differ in at most `--threshold` bits, or one's pHash and\n"
         "the other's mirrored pHash do; a chain of such pairs is one group. Only images the\n"
         '`near-dup-hash` action has hashed are compared (`hoard action run near-dup-hash`).',
 'search': 'The stored images nearest TEXT, nearest first, one a line: cosine similarity, sha256 and\n'
           'where the image came from. Only images the `clip-embed` action has embedded with the model\n'
           'of `search.clip_model` / `search.clip_weights` are searched (`hoard action run clip-embed`).',
 'install': 'Install hoardfs as services of the `hoard` user (root; idempotent). docs/operations.md.',
 'uninstall': 'Remove the units and the venv; never data (disks, SSD, database, /etc/hoard are kept).'}
