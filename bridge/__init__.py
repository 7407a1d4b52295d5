"""reteno-telegram-bridge: registers Telegram bot users' chat ids with Reteno
(eSputnik, Yespo), keeps an audit ledger of every token and delivers them
through a durable outbox.

Mount it in a Flask app::

    from bridge import Bridge
    Bridge(app, url_prefix="/reteno")
"""

__version__ = "0.1.0"

from .extension import Bridge, Runtime  # noqa: E402

__all__ = ["Bridge", "Runtime", "__version__"]
