"""``labctl web``: the lab live in a browser (issue 15).

- :mod:`~labctl.web.api`: each view's JSON, pure functions of what the lab and its capture say;
- :mod:`~labctl.web.live`: the lab behind the page: one follower of its capture and its hosts,
  the views read under a lock, the actions through :class:`~labctl.lab.Lab` and :mod:`labctl.mail`;
- :mod:`~labctl.web.events`: a numbered event log the follower feeds, and the Server-Sent Events
  stream of it (resume by id, heartbeat);
- :mod:`~labctl.web.runs`: scenario runs, published by ``labctl run`` and read by the follower;
- :mod:`~labctl.web.server`: the thin HTTP shell (127.0.0.1 only, a token, Host and Origin
  checked, a strict Content-Security-Policy, POST for every action);
- ``static/``: the page, plain ES modules and hand-drawn SVG, no build step.
"""
