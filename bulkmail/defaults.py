"""The default of every sending knob, defined once.

The settings (``BULKMAIL_*`` variables), the poller's command-line options, the poller, the
Celery tasks and the outbox all take their defaults from here, so no two of them can disagree.
"""

from __future__ import annotations

# The poller: claims, leases and its chores.
BATCH = 1_000  # emails claimed per round
COMPLETION_BATCH = 500  # messages with SMTP whose outcome is not yet committed, at most
LEASE_SECONDS = 300.0  # how long a claim is held before the reaper may end it
GRACE_SECONDS = 30.0  # after SIGTERM, how long rounds in flight may finish
POLL_INTERVAL_SECONDS = 2.0  # polling fallback to LISTEN/NOTIFY
REAP_INTERVAL_SECONDS = 30.0  # how often a poller ends the claims whose lease expired
HEARTBEAT_SECONDS = 5.0  # how often a poller records that it is alive (the dashboard reads it)

# Per-provider throttling: deferrals that halve a provider's rate, and its recovery.
THROTTLE_DEFERRALS = 5  # deferrals within the window that halve the rate
THROTTLE_WINDOW_SECONDS = 60.0
THROTTLE_COOLDOWN_SECONDS = 300.0  # at the halved rate, before recovery starts
THROTTLE_STEP_SECONDS = 30.0  # then a tenth of the limit back every step

# Retries of temporary failures (4xx, lost connections).
RETRY_FIRST_SECONDS = 60.0  # wait before the first retry; it doubles after each attempt
RETRY_MAX_SECONDS = 3_600.0  # the longest wait between two attempts
MAX_ATTEMPTS = 10  # delivery attempts before an email fails
MAX_LIFETIME_SECONDS = 5 * 24 * 3_600.0  # age after which an email is not retried any more

# Incoming mail (bulkmail worker inbound).
INBOUND_POLL_INTERVAL_SECONDS = 60.0
INBOUND_CONCURRENCY = 4
INBOUND_LEASE_SECONDS = 120.0
INBOUND_BACKOFF_MAX_SECONDS = 3600.0
