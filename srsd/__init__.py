"""srsd: mail forwarding for Postfix: SRS (tcp_table, socketmap), SPF (policy service,
SPF-aware rewriting), DKIM signing and ARC sealing (milter)."""
