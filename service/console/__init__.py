"""The security team's web console, served by ``breakglass serve`` under ``/console/``.

Same login as the API (local password + TOTP, or an OIDC ID token); only members of
``[console] reviewers`` (default: ``[service] admins``) may open it. Pages are rendered on the
server with every value escaped; the only scripts are the console's own static files (strict
Content-Security-Policy, no inline scripts); state-changing forms carry a CSRF token
(double-submit cookie, SameSite=Strict); cookies are ``__Host-``, Secure and HttpOnly.
Recorded bytes are untrusted: SSH output goes through the terminal filter and is drawn by
xterm.js (never as HTML), statements are text.
"""

from __future__ import annotations

from breakglass.service.console.web import setup_console

__all__ = ["setup_console"]
