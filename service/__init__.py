"""The grant service (``breakglass serve``): identity (local users, OIDC), access requests
and approvals, grant issuance over HTTP, its metrics and the web console."""
