"""The support page (``BRIDGE_SUPPORT_PAGE=true``): read-only HTML under ``/support/``
of the bridge's mount, for support staff with ``bridge support-user`` accounts.

* :mod:`.story` — one chat's story in plain words, and its one-sentence answer;
* :mod:`.overview` — the outbox, the states, the conflicts waiting for review;
* :mod:`.chart` — the 30-day chart of registrations, removals and comebacks (SVG);
* :mod:`.session` — the signed session cookie, CSRF tokens, the security headers;
* :mod:`.views` — the blueprint: thin views over the three above.

The first three import no Flask; only the ledger writes (accounts, the login throttle).
"""
