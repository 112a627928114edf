"""Time limits of service calls, and the event-loop hub of a server worker.

The service's own names for the pool's primitives (see ``hsmpool._calls``), so that front
ends bound their requests without importing the pool:

* ``with deadline(seconds):`` bounds every token call made in the block (a hung token is
  abandoned and ejected, the operation retried on another one while time is left);
* :class:`AsyncHub` runs request functions in greenlets on an asyncio loop; their token
  calls run on the tokens' executor while the loop serves other requests.
"""

from __future__ import annotations

from hsmpool import AsyncHub, deadline

__all__ = ["AsyncHub", "deadline"]
