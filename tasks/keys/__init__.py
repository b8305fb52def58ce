"""Key inventory, policy checks and the exactly-once ledger of key-event collection."""
