"""Mail authentication in the milter: DKIM (RFC 6376, 8463), ARC (RFC 8617) and
Authentication-Results (RFC 8601).

==================  ==========================================================
``handler``         what the milter does with a message: classify, verify, seal, sign
``message``         the milter's view of a message and the edits it can make
``verify``          DKIM and ARC verification (blocking; worker threads)
``sign``            DKIM signing and ARC sealing (blocking; worker threads)
``canonical``       canonicalization and field selection the signer and verifier share
``results``         Authentication-Results: build (authres), read our authserv-id
``signing_table``   which keys sign which mail: From domain, subdomains, active/next/retired
``author``          the RFC5322.From domain local mail is signed for
``rotation``        a next key starts signing once its DNS record is published
``keys``            signing keys: load, generate, DNS record text and whether a record matches
``key_lookup``      DKIM key lookups over srsd's resolver (a dnsfunc, as dkimpy's)
``dkimpy_setup``    dkimpy's slow steps swapped (RSA in OpenSSL, memos), the body memo
==================  ==========================================================

Importing the package runs nothing; see docs/dkim.md.
"""
