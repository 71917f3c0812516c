"""``[dkim] processes``: the milter's per-message jobs in child processes.

A real reactor on a thread (the children are real processes, spawned by it), the real
DNS server on loopback, real keys; what comes back is checked as test_mailauth checks
the thread pool's work (dkimpy over the edited message). And what must not be lost:
a child killed in the middle of a message answers that message with ``on_error`` and
is replaced; a reload reaches the children.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
import zlib

import pytest
from twisted.internet import defer, process

from srsd.dns import Resolver
from srsd.mailauth import job_processes
from srsd.mailauth.handler import MailAuth, auth_settings
from srsd.mailauth.job_processes import JobProcesses
from srsd.mailauth.message import Message, TempFail
from srsd.mailauth.sign import sign_message
from srsd.spf import SPFChecker
from tests.reactor_thread import ReactorThread
from tests.unit.test_mailauth import (
    BODY,
    ORIGIN_HEADERS,
    ORIGIN_SIGNED,
    apply,
    check_forwarded,
    envelope,
    keys,  # noqa: F401 (a fixture)
    make_config,
    names,
    origin_message,
    zone,  # noqa: F401 (a fixture)
)


@pytest.fixture
def rt():
    thread = ReactorThread()
    yield thread
    thread.stop()


@pytest.fixture
def make_auth(tmp_path, keys, zone, rt):  # noqa: F811
    made = []

    def make(**dkim_settings):
        config = make_config(tmp_path, keys, zone, None, processes=2, **dkim_settings)
        resolver = Resolver([zone.address], timeout=0.5)

        def build():
            checker = SPFChecker(rt.reactor, resolver, threads=2, budget=5)
            return MailAuth(config, resolver, checker, rt.reactor)

        auth = rt.call(build)
        made.append(auth)
        return auth

    yield make
    for auth in made:
        rt.call(auth.jobs.stop)


def run(rt, auth, env, message, timeout=30):
    return rt.call(auth.end_of_message, env, message, timeout=timeout)


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.02)


def reaping(rt, predicate):
    """*predicate*, after reaping exited children on the reactor: the test's reactor runs
    without signal handlers, so no SIGCHLD tells it (srsd's reactor has them)."""

    def check():
        rt.call(process.reapAllProcesses)
        return predicate()

    return check


def test_the_settings_and_keys_pickle(tmp_path, keys, zone):  # noqa: F811
    settings = auth_settings(make_config(tmp_path, keys, zone))
    copy = pickle.loads(pickle.dumps(settings))
    assert copy.table.forwarder_keys()[0].key.txt_record() == keys["fwd"].txt_record()
    assert copy.authserv_id == settings.authserv_id and copy.dmarc == settings.dmarc


def test_forwarded_message_is_verified_sealed_and_signed_in_a_child(make_auth, rt, keys, zone):  # noqa: F811
    auth = make_auth()
    assert isinstance(auth.jobs, JobProcesses)
    message = origin_message(keys)
    for _ in range(3):  # the first SPF check is a miss (two jobs), the next ones hit its cache (one)
        delivered = apply(message, run(rt, auth, envelope(), message))
        check_forwarded(zone, delivered)
    pids = {child.transport.pid for child in auth.jobs._children}
    assert len(pids) == 2 and os.getpid() not in pids
    assert auth.pending == 0


def test_local_mail_is_signed_in_a_child(make_auth, rt, keys):  # noqa: F811
    auth = make_auth()
    message = origin_message(keys, sign=False)
    delivered = apply(message, run(rt, auth, envelope(macros={"{auth_authen}": "alice"}), message))
    assert names(delivered)[0] == "DKIM-Signature"


def test_a_killed_child_answers_on_error_and_is_replaced(make_auth, rt, keys, zone):  # noqa: F811
    auth = make_auth(budget=20)
    message = origin_message(keys)
    run(rt, auth, envelope(), message)  # SPF now cached: the next message is one job
    # signed for a domain no child has asked about: its job waits on the paused server
    fresh = Message([sign_message(ORIGIN_HEADERS, BODY, keys["origin"], "other.example", "s9", ORIGIN_SIGNED),
                     *ORIGIN_HEADERS], BODY)  # fmt: skip
    zone.add("s9._domainkey.other.example", {"TXT": keys["origin"].txt_record()})
    zone.pause()
    answered: list = []
    rt.call(lambda: auth.end_of_message(envelope(), fresh).addBoth(answered.append) and None)
    busy: list = []

    def found_busy() -> bool:
        busy[:] = [child for child in auth.jobs._children if child.job is not None]
        return bool(busy)

    wait_for(found_busy)
    os.kill(busy[0].transport.pid, signal.SIGKILL)
    wait_for(reaping(rt, lambda: answered))
    zone.resume()
    assert len(answered[0]) == 1 and isinstance(answered[0][0], TempFail)
    wait_for(reaping(rt, lambda: len(auth.jobs._children) == 2 and all(c.running for c in auth.jobs._children)))
    assert busy[0] not in auth.jobs._children
    check_forwarded(zone, apply(message, run(rt, auth, envelope(), message)))


def test_a_reload_reaches_the_children(make_auth, rt, keys, zone, tmp_path):  # noqa: F811
    auth = make_auth()
    message = origin_message(keys)
    run(rt, auth, envelope(), message)
    rt.call(auth.reconfigure, make_config(tmp_path, keys, zone, None, processes=2, selector="", key_file=""))
    assert [a.name for a in run(rt, auth, envelope(), message)] == ["Authentication-Results"]
    rt.call(auth.reconfigure, make_config(tmp_path, keys, zone, None, processes=0))
    assert auth.jobs is auth.pool
    check_forwarded(zone, apply(message, run(rt, auth, envelope(), message)))


def test_a_stuck_child_is_killed_and_replaced(rt, monkeypatch):
    monkeypatch.setattr(job_processes, "KILL_AFTER", 0.5)
    jobs = rt.call(JobProcesses, rt.reactor, 1, Resolver(["127.0.0.1:53"]))
    try:
        failed: list = []
        rt.call(lambda: jobs.run_until(time.monotonic() + 0.5, time.sleep, 60).addErrback(failed.append) and None)
        wait_for(lambda: failed)
        assert failed[0].check(defer.TimeoutError)
        first = jobs._children[0]
        wait_for(reaping(rt, lambda: not first.running))  # killed 0.5 s after the deadline
        wait_for(reaping(rt, lambda: len(jobs._children) == 1 and jobs._children[0].running and jobs.pending == 0))
        assert rt.call(jobs.run_until, time.monotonic() + 10, abs, -3) == 3  # the replacement works
    finally:
        rt.call(jobs.stop)


def test_a_stop_during_a_job_ends_the_child_cleanly(rt):
    jobs = rt.call(JobProcesses, rt.reactor, 1, Resolver(["127.0.0.1:53"]))
    failed: list = []
    rt.call(lambda: jobs.run_until(time.monotonic() + 30, time.sleep, 1).addErrback(failed.append) and None)
    wait_for(lambda: jobs._children and jobs._children[0].job is not None)
    child = jobs._children[0]
    rt.call(jobs.stop)  # its stdin closes: it finishes the job, finds the parent gone, exits 0
    wait_for(reaping(rt, lambda: not child.running))
    assert child.exit_code == 0
    assert not failed and jobs.pending == 0  # its answer still came back; nobody left waiting


def test_a_sighup_to_a_child_is_ignored(rt):
    jobs = rt.call(JobProcesses, rt.reactor, 1, Resolver(["127.0.0.1:53"]))
    try:
        assert rt.call(jobs.run_until, time.monotonic() + 10, abs, -1) == 1  # started and serving
        child = jobs._children[0]
        os.kill(child.transport.pid, signal.SIGHUP)  # as a reload signalled to the whole group
        assert rt.call(jobs.run_until, time.monotonic() + 10, abs, -2) == 2
        assert jobs._children == [child] and child.running
    finally:
        rt.call(jobs.stop)


def test_frames_larger_than_a_pipe_arrive_whole(rt):
    """A context and a job larger than a pipe takes at once (64 KiB), and an answer too:
    the part a write leaves over follows in order (the job's frame queues behind it), and
    each side reads its frame whole."""
    jobs = rt.call(JobProcesses, rt.reactor, 1, Resolver(["127.0.0.1:53"]))
    try:
        table = os.urandom(1 << 20)  # the signing table's place in the context: 1 MiB
        rt.call(jobs.set_context, None, table)
        assert rt.call(jobs.run_until, time.monotonic() + 20, zlib.crc32, table) == zlib.crc32(table)
        blob = os.urandom(300_000)
        assert rt.call(jobs.run_until, time.monotonic() + 20, bytes.hex, blob) == blob.hex()  # a 600 KB answer
    finally:
        rt.call(jobs.stop)
