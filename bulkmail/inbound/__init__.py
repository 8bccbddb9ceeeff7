"""Incoming mail: IMAP and POP3 mailboxes of users and queues, synced into Received emails.

The path, one module each: ``profiles`` (where a mailbox's mail is fetched from; ``secrets``
keeps its password), ``servers`` (IMAP and POP3 sessions), ``sync`` (one mailbox under a lease),
``parse`` and ``reports`` (a message's bytes into fields, bounces and complaints; no I/O),
``store`` (one message into an email row, exactly once), ``bounces`` (what a bounce does to the
contact and the operation), ``monitor`` (sync state and counters for people and dashboards).
"""
