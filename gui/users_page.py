"""`/users`: who may sign in (admins only): add, remove, set a password — the same
functions as `hoard users`."""

from __future__ import annotations

from nicegui import ui

from hoardfs.base.errors import HoardError
from hoardfs.gui.auth import require
from hoardfs.gui.context import ctx, in_thread, page
from hoardfs.gui.frame import frame
from hoardfs.jobs import users as users_mod


@ui.refreshable
def _table() -> None:
    with ui.grid(columns=3).classes("gap-x-8"):
        for head in ("name", "role", "defined in"):
            ui.label(head).classes("text-bold")
        for u in sorted(users_mod.users(ctx().cfg).values(), key=lambda u: u.name):
            ui.label(u.name)
            ui.label(u.role)
            ui.label("hoard.toml" if u.from_config else "users file")


def register() -> None:
    @page("/users")
    def users_page() -> None:
        with frame("Users") as user:
            if not user.may("users"):
                ui.label(f"Only an admin manages users; you are signed in as a {user.role}.")
                return
            _table()
            with ui.card().classes("q-mt-md w-96"):
                ui.label("Add a user or set a password").classes("text-subtitle1")
                name = ui.input("Name")
                role = ui.select(list(users_mod.ROLES), value="viewer", label="Role")
                password = ui.input("Password", password=True)
                status = ui.label("")

                async def act(what: str) -> None:
                    require("users")
                    try:
                        if what == "add":
                            await in_thread(users_mod.add, ctx().cfg, name.value.strip(), role.value,
                                            password.value)
                        elif what == "passwd":
                            await in_thread(users_mod.passwd, ctx().cfg, name.value.strip(), password.value)
                        else:
                            await in_thread(users_mod.remove, ctx().cfg, name.value.strip())
                    except HoardError as e:
                        status.text = e.message
                        status.classes("text-negative", remove="text-positive")
                        return
                    status.text = {"add": "added", "passwd": "password set", "rm": "removed"}[what] + \
                        f": {name.value.strip()}"
                    status.classes("text-positive", remove="text-negative")
                    password.value = ""
                    _table.refresh()

                with ui.row():
                    ui.button("Add", on_click=lambda: act("add")).mark("user-add")
                    ui.button("Set password", on_click=lambda: act("passwd")).mark("user-passwd")
                    ui.button("Remove", on_click=lambda: act("rm")).props("color=negative").mark("user-rm")
