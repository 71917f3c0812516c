"""A reload that several processes make: the new first secret verifies everywhere
before anyone signs with it (Daemon._held_signer / promote; srsd.service)."""

from twisted.internet.task import Clock

from srsd.config import load_config
from srsd.service import Daemon
from srsd.srs import SRS

SENDER = "alice@orig.example"


def write(tmp_path, secrets):
    (tmp_path / "secrets").write_text("".join(f"{s}\n" for s in secrets))
    path = tmp_path / "srsd.toml"
    secrets_file = tmp_path / "secrets"
    path.write_text(
        f'[srs]\ndomain = "fwd.example"\nsecrets_file = "{secrets_file}"\n'
        '[daemon]\nuser = "root"\n[store]\nbackend = "none"\n'
    )
    return str(path)


def test_a_held_reload_verifies_the_new_secret_and_signs_with_the_old_until_promoted(tmp_path):
    path = write(tmp_path, ["old"])
    daemon = Daemon(load_config(path), path, reactor=Clock())
    write(tmp_path, ["new", "old"])
    assert daemon._apply_reload(daemon._read_for_reload(), False, True)
    minted_elsewhere = SRS(["new"], "fwd.example").forward(SENDER)  # by a process already promoted
    assert daemon.lookup("reverse", minted_elsewhere) == ("found", SENDER)
    assert daemon.lookup("forward", SENDER) == ("found", SRS(["old"], "fwd.example").forward(SENDER))
    assert daemon.promote()
    assert daemon.lookup("forward", SENDER) == ("found", SRS(["new"], "fwd.example").forward(SENDER))
    assert daemon.lookup("reverse", SRS(["old"], "fwd.example").forward(SENDER)) == ("found", SENDER)
    assert not daemon.promote()  # nothing held any more


def test_a_retired_signer_is_not_held(tmp_path):
    path = write(tmp_path, ["old"])
    daemon = Daemon(load_config(path), path, reactor=Clock())
    write(tmp_path, ["new"])  # "old" removed: nothing may sign with it
    assert daemon._apply_reload(daemon._read_for_reload(), False, True)
    assert daemon.lookup("forward", SENDER) == ("found", SRS(["new"], "fwd.example").forward(SENDER))
    assert not daemon.promote()
