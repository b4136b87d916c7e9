"""UA_2, actions: work done on a batch of nodes by an S04 worker (docs/actions.md).

`contract` — the ActionContract files (TOML, one per S04 process): their model, loading a
file safely and listing a directory of them. `parse` — a worker's output root read back
into child files and typed result records, hostile-input safe. Running an action is not
built yet (issue 35).
"""
