"""``labctl web``: the lab live in a browser (issue 15).

- :mod:`~labctl.web.api`: each view's JSON, pure functions of what the lab and its capture say;
- :mod:`~labctl.web.events`: the live part, a numbered event log fed by one follower of the
  capture, and the Server-Sent Events stream of it (resume by id, heartbeat);
- :mod:`~labctl.web.server`: the thin HTTP shell (127.0.0.1 only, a token, Host and Origin
  checked, a strict Content-Security-Policy, POST for every action);
- ``static/``: the page, plain ES modules and hand-drawn SVG, no build step.
"""
