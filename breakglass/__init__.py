"""breakglass: automated temporary production access.

Installed as one namespace; in the repository each part keeps a top-level folder
(mapped by ``[tool.setuptools] package-dir`` in pyproject.toml):

* ``breakglass.proxy``: the gateway (PostgreSQL and SSH relays, sessions, admin socket);
* ``breakglass.policy``: grants, templates, the SQL checker and command matcher, state;
* ``breakglass.recorder``: recordings and the audit log, and what reads them (verify,
  replay, export, search, review, alerts, the access report);
* ``breakglass.service``: the grant service (identity, requests, the web console);
* ``breakglass.cli``: the ``breakglass`` command, a thin layer over all of them;
* ``breakglass.throwaway``: throwaway servers for the demo, tests and benchmarks.
"""
