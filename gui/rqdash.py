"""rq-dashboard (a Flask app) mounted under `/rq` through a WSGI bridge (a2wsgi), behind the
same login as every page (gui.auth's middleware wraps the whole ASGI app, mounts included).

A viewer may look but not act: rq-dashboard's requeue/cancel/delete/empty are POSTs, which
gui.auth refuses to a viewer (ACTING_PREFIXES). rq-dashboard lists every job it is asked for and gets slow
with many failed ones (rq-dashboard #91, #396): our own pages show counts instead.
"""

from __future__ import annotations

from pathlib import Path

import rq_dashboard
from a2wsgi import WSGIMiddleware
from flask import Flask
from nicegui import app
from rq_dashboard.web import setup_rq_connection
from starlette.routing import Mount

from fsd.base.config import Settings

PREFIX = "/rq"


def flask_app(cfg: Settings) -> Flask:
    # /static/ is the blueprint's (its JS and CSS); the app's own, which its base template asks
    # for the favicon, moves aside and serves the same directory
    fa = Flask("hoard_rq_dashboard", static_folder=str(Path(rq_dashboard.__file__).parent / "static"),
               static_url_path="/_app_static")
    fa.config.from_object(rq_dashboard.default_settings)
    fa.config["RQ_DASHBOARD_REDIS_URL"] = cfg.redis_url
    fa.config["RQ_DASHBOARD_POLL_INTERVAL"] = int(cfg.gui.refresh_s * 1000)
    # the blueprint at the Flask app's root: the mount gives it SCRIPT_NAME=/rq, so its links
    # and static files carry the prefix
    fa.register_blueprint(rq_dashboard.blueprint, url_prefix="")
    setup_rq_connection(fa)
    return fa


def mount(cfg: Settings) -> None:
    # a rebuilt app (tests) replaces the mount instead of adding a second one behind the first
    app.routes[:] = [r for r in app.routes if not (isinstance(r, Mount) and r.path == PREFIX)]
    app.mount(PREFIX, WSGIMiddleware(flask_app(cfg)))
