"""srsd.mailauth.keys.load_signing_key loads a file's key once: the same bytes give the same key
object (a SIGHUP reload loads each key twice, and cryptography's RSA key checks cost
~0.13 s holding the GIL); changed bytes are loaded and checked again."""

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from srsd.mailauth import keys as sd


def _write(path, private):
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return str(path)


def test_same_bytes_same_key_new_bytes_new_key(tmp_path):
    path = _write(tmp_path / "k.private", rsa.generate_private_key(65537, 2048))
    first = sd.load_signing_key(path)
    assert sd.load_signing_key(path) is first

    _write(tmp_path / "k.private", rsa.generate_private_key(65537, 2048))  # rotated in place
    second = sd.load_signing_key(path)
    assert second is not first and second.public_key_base64() != first.public_key_base64()


def test_a_loaded_key_still_refuses_the_other_algorithm(tmp_path):
    path = _write(tmp_path / "k.private", rsa.generate_private_key(65537, 2048))
    sd.load_signing_key(path)
    with pytest.raises(sd.DKIMKeyError, match="an rsa key, but the algorithm is ed25519-sha256"):
        sd.load_signing_key(path, "ed25519-sha256")


def test_a_file_gone_bad_is_refused_after_a_good_load(tmp_path):
    path = _write(tmp_path / "k.private", rsa.generate_private_key(65537, 2048))
    sd.load_signing_key(path)
    (tmp_path / "k.private").write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    with pytest.raises(sd.DKIMKeyError, match="not a usable PEM private key"):
        sd.load_signing_key(path)
