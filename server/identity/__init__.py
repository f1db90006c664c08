"""Who a connection is, beyond one token check: platform sessions and the lifetime of an identity.

``auth`` is the entry point (``Authenticator``, ``Identity``, the Origin check); beside it are the
parts it grew: the token check (``hs256``), the session verifier with its cache (``sessions``), the
one schedule of token expiries and session re-checks (``lifetime``) and the close codes
(``errors``).
"""
