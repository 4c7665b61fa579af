"""The PSYNC_* settings that point every connector at a local sandbox (demo, tests, bench).

The ids are the sandbox's fixed ones (``sandbox/*``): its groups, services, service points
and credentials. One place, so the demo, the tests and the benchmarks cannot drift apart.
"""

from __future__ import annotations

import json

CREDENTIAL_ID, CREDENTIAL_SECRET = "psync-sandbox", "sandbox-secret"
TIMIFY_COMPANY_ID = "5f0c1a2b3c4d5e6f7a8b9c0d"
TIMIFY_BRANCH_SERVICE_ID = "65e6d029d9d6e5c324d2aa01"
TIMIFY_VIDEO_SERVICE_ID = "65e6d029d9d6e5c324d2aa02"
# Our service point ids -> the sandbox's TIMIFY resources.
SERVICE_POINTS = {
    "sp-hamburg": "65e6d029d9d6e5c324d2bb01",
    "sp-berlin": "65e6d029d9d6e5c324d2bb02",
    "sp-muenchen": "65e6d029d9d6e5c324d2bb03",
}


def sandbox_environment(root: str, rate_per_second: float = 1000.0) -> dict[str, str]:
    """Environment variables for a sandbox at `root` (``http://127.0.0.1:8700``).

    >>> sandbox_environment("http://127.0.0.1:8700")["PSYNC_TIMIFY_BASE_URL"]
    'http://127.0.0.1:8700/timify'
    """
    rate = str(rate_per_second)
    return {
        "PSYNC_CLEVERREACH_BASE_URL": f"{root}/cleverreach",
        "PSYNC_CLEVERREACH_CLIENT_ID": CREDENTIAL_ID,
        "PSYNC_CLEVERREACH_CLIENT_SECRET": CREDENTIAL_SECRET,
        "PSYNC_CLEVERREACH_GROUP_NEWSLETTER": "1001",
        "PSYNC_CLEVERREACH_GROUP_SERVICE_OFFERS": "1002",
        "PSYNC_CLEVERREACH_RATE_PER_SECOND": rate,
        "PSYNC_TIMIFY_BASE_URL": f"{root}/timify",
        "PSYNC_TIMIFY_APP_ID": CREDENTIAL_ID,
        "PSYNC_TIMIFY_APP_SECRET": CREDENTIAL_SECRET,
        "PSYNC_TIMIFY_COMPANY_ID": TIMIFY_COMPANY_ID,
        "PSYNC_TIMIFY_BRANCH_SERVICE_ID": TIMIFY_BRANCH_SERVICE_ID,
        "PSYNC_TIMIFY_VIDEO_SERVICE_ID": TIMIFY_VIDEO_SERVICE_ID,
        "PSYNC_TIMIFY_SERVICE_POINTS": json.dumps(SERVICE_POINTS),
        "PSYNC_TIMIFY_RATE_PER_SECOND": rate,
        "PSYNC_FLEXPERTO_BASE_URL": f"{root}/flexperto",
        "PSYNC_FLEXPERTO_CLIENT_ID": CREDENTIAL_ID,
        "PSYNC_FLEXPERTO_CLIENT_SECRET": CREDENTIAL_SECRET,
        "PSYNC_FLEXPERTO_RATE_PER_SECOND": rate,
        "PSYNC_ISIC_BASE_URL": f"{root}/isic",
        "PSYNC_ISIC_CLIENT_ID": CREDENTIAL_ID,
        "PSYNC_ISIC_CLIENT_SECRET": CREDENTIAL_SECRET,
        "PSYNC_ISIC_RATE_PER_SECOND": rate,
        "PSYNC_NECT_BASE_URL": f"{root}/nect",
        "PSYNC_NECT_API_KEY": "sandbox-nect-key",
        "PSYNC_NECT_RATE_PER_SECOND": rate,
    }
