"""Who a connection is, beyond one token check: platform sessions and the lifetime of an identity.

``server.auth`` stays the entry point (``Authenticator``, ``Identity``); this package holds the parts
it grew: the session verifier with its cache (``sessions``) and the one schedule of token expiries
and session re-checks (``lifetime``).
"""
