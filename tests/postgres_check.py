"""Exit 0 if the test PostgreSQL server answers; else print why not and exit 1.

Used by ``make test-postgres`` to decide whether to run the suite on PostgreSQL.
"""

import sys

from tests.conftest import postgres_available

if __name__ == "__main__":
    reason = postgres_available()
    if reason:
        print(reason)
        sys.exit(1)
