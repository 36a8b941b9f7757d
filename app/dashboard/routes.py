"""The usage page. It is a static shell: its figures come from the JSON API,
called from the browser with the token the chat page keeps.
"""

from flask import render_template

from app.dashboard import bp


@bp.get("/usage")
def page():
    return render_template("usage.html")
