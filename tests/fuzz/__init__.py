"""Property-based fuzzing (hypothesis) of the wire adapters over StringTransport."""
