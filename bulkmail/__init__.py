"""bulkmail: the domain library of the bulk-mail platform."""
