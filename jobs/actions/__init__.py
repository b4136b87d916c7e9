"""UA_2, actions: work done on a batch of nodes by an S04 worker (docs/actions.md).

`contract` — the ActionContract files (TOML, one per S04 process): their model, loading a
file safely and listing a directory of them. `labelstudio` — AC5's client of a real Label
Studio (project, tasks by URL, export, COCO, annotations → labels). Running an action is not
built yet (issue 35).
"""
