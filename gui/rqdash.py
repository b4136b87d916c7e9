"""rq-dashboard (a Flask app) mounted under `/rq` through a WSGI bridge (a2wsgi), behind the
same login as every page (hoardfs.gui.auth's middleware wraps the whole ASGI app, mounts included).
Every string in the JSON it serves is HTML-escaped (its templates insert it unescaped), and
an acting request must come from the GUI's own pages (hoardfs.gui.auth: no cross-site requeue or
delete).

A viewer may look but not act: rq-dashboard's requeue/cancel/delete/empty are POSTs, which
hoardfs.gui.auth refuses to a viewer (ACTING_PREFIXES); a GET to any of them answers 405. rq-dashboard lists every job it is asked for and gets slow
with many failed ones (rq-dashboard #91, #396): our own pages show counts instead.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import rq_dashboard
from a2wsgi import WSGIMiddleware
from flask import Flask, Response, request
from nicegui import app
from rq_dashboard.web import config as rq_dashboard_config
from rq_dashboard.web import setup_rq_connection
from starlette.routing import Mount

from hoardfs.base.config import Settings
from hoardfs.gui.text import shown
from hoardfs.jobs.guard import SERIALIZER

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
    # hoardfs's jobs are JSON (hoardfs.jobs.guard): with RQ's default, pickle, showing a job written to
    # Redis by someone else would run the code its pickle names, in the GUI's process
    rq_dashboard_config.serializer = SERIALIZER
    fa.before_request(_no_acting_get)
    fa.after_request(_escaped_json)
    return fa


def _no_acting_get():
    """A GET to a route that acts answers 405: rq-dashboard's `/requeue/<queue>` requeues every
    failed job of a queue on GET too, which an `<img>` in any page the operator's browser shows
    could ask for. Its own buttons POST; every route of it that takes a POST acts."""
    rule = request.url_rule
    if request.method in ("GET", "HEAD") and rule is not None and "POST" in (rule.methods or ()):
        return Response("refused: this acts, and acting takes a POST from the GUI's own page (its buttons)\n",
                        status=405, mimetype="text/plain", headers={"Allow": "POST"})
    return None


def _escaped(value):
    if isinstance(value, str):
        return html.escape(shown(value), quote=True)
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}  # keys too: JSON.stringify writes them
    return value


def _escaped_json(response):
    """rq-dashboard's pages put the JSON it serves (job descriptions, results, tracebacks —
    text that can hold a scraped file's name) into the page unescaped (`<%= %>` templates):
    every string is HTML-escaped on its way out (and its hidden characters written out,
    hoardfs.gui.text.shown), so it shows as text and never runs."""
    if response.mimetype == "application/json":
        data = response.get_json(silent=True)
        if data is not None:
            response.set_data(json.dumps(_escaped(data)))
    return response


def mount(cfg: Settings) -> None:
    # a rebuilt app (tests) replaces the mount instead of adding a second one behind the first
    app.routes[:] = [r for r in app.routes if not (isinstance(r, Mount) and r.path == PREFIX)]
    app.mount(PREFIX, WSGIMiddleware(flask_app(cfg)))
