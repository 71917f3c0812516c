"""srsd: Sender Rewriting Scheme daemon for Postfix (tcp_table and socketmap)."""
