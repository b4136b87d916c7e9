"""S02 + S06: the NiceGUI pages of `hoard gui` — login, the scheduler's pages, the dashboards.

The pages only call the jobs/fsd/sql Python APIs and read one cached snapshot (`hoardfs.gui.state`);
no business logic lives here. `build(cfg)` registers the app, `serve(cfg)` runs it. The logins
are `hoardfs.jobs.users`'s (which `hoard users` also uses, without loading the GUI).
"""
