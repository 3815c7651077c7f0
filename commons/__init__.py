"""The shared kernel: settings, database, identity, stations and the audit log."""
