"""The running daemon: endpoints, the current configuration, reload, logging.

One :class:`Daemon` owns the configuration snapshot and wires the parts built
from it side by side: the DNS resolver, the SPF checker over it, the SRS maps
(:mod:`srsd.srs_maps`), the policy service and the milter's handler. It decides
nothing itself. Protocol factories call :meth:`Daemon.lookup`, which always reads
the current maps, so SIGHUP swaps the configuration without touching a
connection. Worker processes (``srsd serve --workers N``) inherit the listening
sockets and accept from the same queues: see :mod:`srsd.workers`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, endpoints
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from srsd.alias_store import AliasStore, DeferredStore, open_store
from srsd.answer_cache import AnswerCache
from srsd.config import Config, ConfigError, Needs, default_config, load_config
from srsd.dns import Resolver
from srsd.log_limit import LIMITER
from srsd.log_targets import OUTPUT, set_log_level, setup_logging
from srsd.policy_service import PolicyService
from srsd.protocols.base import EndpointFactory
from srsd.protocols.policy import PolicyFactory
from srsd.protocols.socketmap import SocketmapFactory
from srsd.protocols.tcp_table import TcpTableFactory
from srsd.rewrite import Answer, Rewriter, rewriter_from_config
from srsd.spf import SPFChecker
from srsd.spf_aware import SPFAwareForward
from srsd.srs_maps import SRSMaps
from srsd.workpool import BoundedPool

if TYPE_CHECKING:
    from srsd.mailauth.handler import AuthSettings, MailAuth
    from srsd.privileges import Account

__all__ = [
    "Daemon",
    "EndpointSpec",
    "ListenError",
    "endpoint_specs",
    "setup_logging",
    "load",
    "raise_open_files_limit",
    "serve",
]

log = Logger(namespace="srsd")

#: seconds between two evictions of expired aliases (SQLite; Redis expires its own keys)
EVICT_INTERVAL = 3600.0


def load(path: str | None, needs: Needs = Needs.EVERYTHING) -> Config:
    """The config at *path*, or the embedded default when *path* is None; *needs*:
    the parts the caller uses (:class:`srsd.config.Needs`).

    :raises ConfigError: see :func:`srsd.config.load_config`.
    """
    return load_config(path, needs) if path else default_config(needs)


def log_warnings(config: Config) -> None:
    """Log what an admin should fix in *config* (loose file modes, running as root)."""
    for warning in config.warnings:
        log.warn("{warning}", warning=warning)


@dataclass(frozen=True)
class EndpointSpec:
    """One listener srsd can have: its ``[listen]`` key and how its factory is made."""

    name: str
    make_factory: Callable[[Daemon], EndpointFactory]


#: the endpoints the lookup processes serve (srsd.lookup_loop)
LOOKUP_ENDPOINTS = ("tcp_forward", "tcp_reverse", "socketmap")


def _limits(daemon: Daemon) -> dict[str, Any]:
    lim = daemon.config.limits
    return {
        "max_request_bytes": lim.max_request_bytes,
        "max_connections": lim.max_connections,
        "idle_timeout": lim.idle_timeout,
    }


def _lookup_options(daemon: Daemon) -> dict[str, Any]:
    """A lookup endpoint's limits, its own answer cache and the rule of what goes in it."""
    return {**_limits(daemon), "cache": daemon.answer_cache(), "cacheable": daemon.cacheable}


def _milter_factory(d: Daemon) -> EndpointFactory:
    # Imported where the milter is served: the lookup processes never load dkimpy,
    # cryptography and the DMARC code (~10 MB of RSS each, docs/performance.md).
    from srsd.mailauth.handler import GRACE
    from srsd.protocols.milter import MilterFactory

    # The handler answers within dkim.budget + GRACE; the milter waits a bit longer.
    return MilterFactory(
        d.mailauth,
        "milter",
        on_error=lambda: d.config.dkim.on_error,  # follows SIGHUP reloads
        timeout=d.config.dkim.budget + GRACE + 5,
        max_connections=d.config.limits.max_connections,
        idle_timeout=d.config.limits.idle_timeout,
    )


def endpoint_specs(config: Config) -> list[tuple[EndpointSpec, str]]:
    """The enabled endpoints of *config* as (spec, endpoint string) pairs."""
    specs = [
        EndpointSpec(
            "tcp_forward",
            lambda d: TcpTableFactory(d.lookup, "tcp_forward", "forward", **_lookup_options(d)),
        ),
        EndpointSpec(
            "tcp_reverse",
            lambda d: TcpTableFactory(d.lookup, "tcp_reverse", "reverse", **_lookup_options(d)),
        ),
        EndpointSpec(
            "socketmap",
            lambda d: SocketmapFactory(d.lookup, "socketmap", **_lookup_options(d)),
        ),
        EndpointSpec("milter", _milter_factory),
        EndpointSpec(
            "policy",
            # Policy requests are larger than lookups (~1-8 KB): the factory's own
            # request limit applies, not limits.max_request_bytes.
            lambda d: PolicyFactory(
                d.policy,
                "policy",
                max_connections=d.config.limits.max_connections,
                idle_timeout=d.config.limits.idle_timeout,
            ),
        ),
    ]
    return [(spec, getattr(config.listen, spec.name)) for spec in specs if getattr(config.listen, spec.name)]


class Daemon:
    """srsd's parts for one configuration source, wired together.

    :param config: the loaded configuration.
    :param config_path: where SIGHUP re-reads it from (None = embedded default).
    :param serves: the endpoints this process serves (None: every one enabled); the
        policy service and the milter's handler are built only where they are served.
    """

    def __init__(
        self, config: Config, config_path: str | None = None, reactor: Any = None, serves: frozenset[str] | None = None
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config_path = config_path
        self.serves = serves
        self.ports: dict[str, Any] = {}
        self.resolver: Resolver | None = None
        self.checker: SPFChecker | None = None
        self.policy: PolicyService | None = None
        self.mailauth: MailAuth | None = None
        self._reload_lock = defer.DeferredLock()
        self._promotion: Rewriter | None = None  # the new signer a reload holds back (promote)
        #: further metrics snapshots for /metrics (the children's, set by serve)
        self.metric_sources: Callable[[], list[dict[str, Any]]] = list
        #: {(endpoint, process): open connections handed there} for /metrics (the dealer's, set by serve)
        self.handed: Callable[[], dict[tuple[str, str], int]] = dict
        self.caches: list[AnswerCache] = []  # one per lookup endpoint, emptied on reload
        # The alias store lives as long as the process: [store] changes need a restart.
        self.store: AliasStore | None = open_store(config)
        self.aliases: DeferredStore | None = None
        if self.store is not None:
            pool = BoundedPool(self.reactor, config.store.threads, "srsd-store")
            self.aliases = DeferredStore(self.store, pool, config.store.timeout)
        self._evictor: LoopingCall | None = None
        self._apply(config, rewriter_from_config(config), self._auth(config))

    def _serving(self, name: str) -> bool:
        return self.serves is None or name in self.serves

    def _auth(self, config: Config) -> AuthSettings | None:
        """The milter's settings when the milter is enabled and served here."""
        if not (config.listen.milter and self._serving("milter")):
            return None
        from srsd.mailauth.handler import auth_settings

        return auth_settings(config)

    def _apply(self, config: Config, rewriter: Rewriter, auth: AuthSettings | None = None) -> None:
        self.config = config
        set_log_level(config.log.level)
        LIMITER.configure(config.log.rate_limit, config.log.burst)
        spf_aware = None
        if config.spf.aware:
            spf_aware = SPFAwareForward(
                self.spf_checker(),
                config.spf.egress_ips,
                config.spf.skip_results,
                budget=config.spf.decision_budget,
                helo=config.spf.receiver or config.srs.domain,
            )
        self.maps = SRSMaps(rewriter, spf_aware, store=self.aliases, debug=config.log.level == "debug")
        for cache in self.caches:
            cache.clear()  # answers of the configuration just replaced
        if config.listen.policy and self._serving("policy"):
            receiver = config.spf.receiver or config.srs.domain
            if self.policy is None:
                self.policy = PolicyService(config.policy, self.spf_checker(), receiver)
            else:  # keeps its per-message memory across a reload
                self.policy.reconfigure(config.policy, receiver=receiver)
        if auth is not None:
            if self.mailauth is None:
                from srsd.mailauth.handler import MailAuth

                # next keys are checked without the cache (a cached "no such name" would hide them)
                c = config.dns
                record_resolver = Resolver(c.nameservers, c.timeout, cache_size=0)
                self.mailauth = MailAuth(auth, self.dns_resolver(), self.spf_checker(), self.reactor, record_resolver)
            else:  # messages under way finish with the old settings
                self.mailauth.reconfigure(auth)

    def dns_resolver(self) -> Resolver:
        """The one resolver (SPF, DKIM keys), built on first use from [dns]."""
        if self.resolver is None:
            c = self.config.dns
            self.resolver = Resolver(c.nameservers, c.timeout, c.cache_size)
        return self.resolver

    def spf_checker(self) -> SPFChecker:
        """The SPF checker (on the reactor, over :meth:`dns_resolver`'s servers), built on first use from [spf]."""
        if self.checker is None:
            c = self.config
            self.checker = SPFChecker(
                self.reactor,
                self.dns_resolver(),
                threads=c.spf.threads,
                budget=c.spf.check_budget,
                receiver=c.spf.receiver or c.srs.domain,
                cache_size=c.spf.result_cache,
                max_ttl=c.spf.result_max_ttl,
            )
        return self.checker

    def start_store(self) -> None:
        """Log whether the alias store answers, and evict expired aliases every
        :data:`EVICT_INTERVAL` seconds (one process does it for all: the parent)."""
        if self.aliases is None:
            return
        self.aliases.check().addCallbacks(
            lambda line: log.info("alias store: {line}", line=line),
            lambda failure: log.warn(
                "alias store not reachable: {error}; long senders and alias addresses get "
                "temporary failures until it is",
                error=failure.getErrorMessage(),
            ),
        )
        self._evictor = LoopingCall(self._evict)
        self._evictor.clock = self.reactor
        self._evictor.start(EVICT_INTERVAL, now=True)

    def _evict(self) -> None:
        def evicted(count: int) -> None:
            if count:
                log.info("alias store: {n} expired aliases evicted", n=count)

        self.aliases.evict(time.time()).addCallbacks(
            evicted, lambda failure: log.warn("alias store: eviction failed: {error}", error=failure.getErrorMessage())
        )

    # -- the hot path -----------------------------------------------------------

    def lookup(self, map_name: str, key: str) -> Answer | defer.Deferred:
        """Answer one lookup of map ``forward`` or ``reverse`` with the current
        configuration's :class:`~srsd.srs_maps.SRSMaps`."""
        return self.maps.lookup(map_name, key)

    def cacheable(self, map_name: str, answer: Answer) -> bool:
        """Whether *answer* holds until the day ends (:meth:`~srsd.srs_maps.SRSMaps.cacheable`)."""
        return self.maps.cacheable(map_name, answer)

    def answer_cache(self) -> AnswerCache | None:
        """A new answer cache for one lookup endpoint (``limits.answer_cache`` entries),
        emptied on every reload; None when the limit is 0."""
        if self.config.limits.answer_cache == 0:
            return None
        cache = AnswerCache(self.config.limits.answer_cache)
        self.caches.append(cache)
        return cache

    # -- life cycle -------------------------------------------------------------

    def listen(self, reactor: Any, inherited: dict[str, tuple[str, int]] | None = None) -> defer.Deferred:
        """Listen on every enabled endpoint.

        :param inherited: (a worker) per endpoint name, ("deal", N): the channel on
            descriptor N that the parent hands this endpoint's connections over
            (:class:`srsd.handoff.Receiver`); the endpoints not named are served
            elsewhere (the lookup processes).
        :returns: a Deferred firing with the list of ports (a worker: none), or failing with
            :class:`ListenError` naming the first endpoint that could not be bound.
        """
        if inherited is not None:  # a worker: its connections come from the parent
            from srsd.handoff import Receiver

            for fd, factories in self.handed_factories(inherited, "handed over by the parent").items():
                Receiver(reactor, socket.socket(fileno=fd), factories).start()
            return defer.succeed([])
        results = []
        for spec, description in endpoint_specs(self.config):
            try:
                d = endpoints.serverFromString(reactor, description).listen(spec.make_factory(self))
            except Exception as exc:  # bad endpoint syntax
                d = defer.fail(exc)
            d.addCallback(self._listening, spec.name, description)
            d.addErrback(self._listen_failed, spec.name, description)
            results.append(d)
        if self.config.listen.metrics:  # the parent alone serves /metrics
            results.append(self._listen_metrics(reactor, self.config.listen.metrics))
        return defer.gatherResults(results, consumeErrors=True).addErrback(lambda f: f.value.subFailure)

    def handed_factories(self, inherited: dict[str, tuple[str, int]], how: str) -> dict[int, dict[str, Any]]:
        """A child's started factories by channel: {descriptor: {endpoint name: factory}}
        for the endpoints *inherited* names (``name=deal:N``), each logged as served
        (*how*: "lookup process", ...)."""
        out: dict[int, dict[str, Any]] = {}
        for spec, description in endpoint_specs(self.config):
            if spec.name in inherited:
                factory = spec.make_factory(self)
                factory.doStart()  # (a listening port would have)
                out.setdefault(inherited[spec.name][1], {})[spec.name] = factory
                log.info("listen.{name}: serving {description} ({how})", name=spec.name, description=description,
                         how=how)  # fmt: skip
        return out

    def _listen_metrics(self, reactor: Any, description: str) -> defer.Deferred:
        from srsd.metrics_http import metrics_registry, metrics_site

        site = metrics_site(metrics_registry(lambda: self.metric_sources(), lambda: self.handed()))
        try:
            d = endpoints.serverFromString(reactor, description).listen(site)
        except Exception as exc:  # bad endpoint syntax
            d = defer.fail(exc)
        d.addCallback(self._listening, "metrics", description)
        return d.addErrback(self._listen_failed, "metrics", description)

    def _listening(self, port: Any, name: str, description: str) -> Any:
        self.ports[name] = port
        log.info("listen.{name}: listening on {description}", name=name, description=description)
        return port

    def _listen_failed(self, failure: Any, name: str, description: str) -> None:
        raise ListenError(f"listen.{name}: cannot listen on {description!r}: {failure.getErrorMessage()}")

    def _held_signer(self, config: Config, rewriter: Rewriter) -> Rewriter:
        """*rewriter*, but still signing with the running first secret when the new
        configuration lists it (among the verifying ones): the first phase of a reload
        that other processes make too (:meth:`promote` ends it). Between two processes'
        reloads, an address one mints must reverse in the other: so the new first
        secret verifies everywhere before anyone signs with it."""
        current = self.config.secrets[:1]
        if not current or config.secrets[:1] == current or current[0] not in config.secrets:
            return rewriter
        self._promotion = rewriter
        held = (current[0], *(secret for secret in config.secrets if secret != current[0]))
        return rewriter_from_config(dataclasses.replace(config, secrets=held))

    def promote(self) -> bool:
        """Sign with the new first secret of the last reload (its second phase; SIGUSR1
        from the parent once every process has the new secrets). :returns: whether
        there was a signer held back."""
        rewriter, self._promotion = self._promotion, None
        if rewriter is None:
            return False
        self.maps = SRSMaps(rewriter, self.maps.spf_aware, store=self.maps.store, debug=self.maps.debug)
        for cache in self.caches:
            cache.clear()  # forward answers signed with the previous secret
        return True

    def reload(self, announce: bool = True) -> bool:
        """Re-read the configuration, secrets and domains (SIGHUP), on this thread.

        A config that does not load is refused with a log line; the running one
        stays. Endpoint changes need a restart (connections are never dropped).

        :param announce: log the new configuration's warnings and the "reloaded" line
            now (False: a child process, or a parent that waits for its children
            first and then calls :meth:`announce_reload`).
        :returns: True when the new configuration is in force.
        """
        return self._apply_reload(self._read_for_reload(), announce)

    def reload_off_reactor(self, announce: bool = True, hold_signer: bool = False) -> defer.Deferred:
        """:meth:`reload`, the files read and checked on a thread, the result applied on
        the reactor: lookups go on meanwhile. Reading blocks (a secrets file on a slow
        mount) and checking costs (~0.13 s of RSA key checks per DKIM key load); on the
        reactor every endpoint waited for it. Reloads run one after another.

        :param hold_signer: one of several processes reloading: keep signing with the
            running first secret until :meth:`promote` (:meth:`_held_signer`).
        :returns: a Deferred firing with True when the new configuration is in force.
        """
        from twisted.internet import threads

        return self._reload_lock.run(
            lambda: threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(), self._read_for_reload
            ).addCallback(self._apply_reload, announce, hold_signer)
        )

    def _read_for_reload(self) -> tuple[Config, Rewriter, AuthSettings | None] | None:
        """The new configuration, or None (logged) when it does not load. Touches no
        state of the running daemon: it may run on any thread."""
        try:
            config = load(self.config_path)
            rewriter = rewriter_from_config(config)
            auth = self._auth(config)  # builds the signing settings: a bad one refuses the reload
        except (ConfigError, ValueError) as exc:
            log.error("reload refused, keeping the running configuration: {error}", error=exc)
            return None
        return config, rewriter, auth

    def _apply_reload(
        self, loaded: tuple[Config, Rewriter, AuthSettings | None] | None, announce: bool = True, hold: bool = False
    ) -> bool:
        if loaded is None:
            return False
        config, rewriter, auth = loaded
        self._promotion = None
        if hold:
            rewriter = self._held_signer(config, rewriter)
        if config.listen != self.config.listen or config.limits != self.config.limits:
            log.warn("reload: [listen] and [limits] changes take effect on restart only")
        old_log, new_log = self.config.log, config.log
        if (old_log.target, old_log.syslog_socket, old_log.facility) != (new_log.target, new_log.syslog_socket,
                                                                         new_log.facility):  # fmt: skip
            log.warn("reload: log.target, log.syslog_socket and log.facility changes take effect on restart only")
        # store.max_local_part is the Rewriter's (rebuilt here); the store itself stays.
        if _store_connection(config) != _store_connection(self.config):
            log.warn("reload: [store] changes other than max_local_part take effect on restart only")
        threads_changed = self.checker is not None and config.spf.threads != self.config.spf.threads
        if self.resolver is not None and (config.dns != self.config.dns or threads_changed):
            log.warn("reload: [dns] and spf.threads changes take effect on restart only")
        self._apply(config, rewriter, auth)
        if announce:
            self.announce_reload()
        return True

    def announce_reload(self, lagging: int = 0) -> None:
        """Log the running configuration's warnings and that it is in force (*lagging*:
        child processes that did not report the reload in time)."""
        config = self.config
        log_warnings(config)
        if lagging:
            log.warn("reload: {n} child process(es) did not report the new configuration in time", n=lagging)
        log.info(
            "reloaded {source}: {n} secrets, {d} local domains",
            source=config.source,
            n=len(config.secrets),
            d=len(self.maps.rewriter.local_domains),
        )


def sd_notify(state: str) -> bool:
    """Tell systemd (``Type=notify``, sd_notify(3)) *state*, e.g. ``READY=1``.

    :returns: False when not started by systemd (no ``$NOTIFY_SOCKET``) or the
        message could not be sent (logged); srsd runs on either way.
    """
    import socket

    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warn("cannot notify systemd ({state}): {error}", state=state, error=exc)
        return False
    return True


def raise_open_files_limit(config: Config) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, so that every endpoint can hold
    ``limits.max_connections`` clients; warn when even that is too low.

    A shell or service manager gives 1024 soft for select()'s sake; srsd's reactor
    uses epoll, and systemd.exec(5) asks such programs to raise it themselves. At
    1024, about 1000 clients on *all* endpoints together made every new client of
    every endpoint get a reset (accept() fails with EMFILE), not the documented TEMP.

    :returns: the soft limit now in force.
    """
    import resource

    needed = len(endpoint_specs(config)) * config.limits.max_connections + 100  # listeners, DNS, logs
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warn("cannot raise the open files limit from {soft}: {error}", soft=soft, error=exc)
    if soft < needed:
        log.warn(
            "limits.max_connections: {n} endpoint(s) x {m} clients need about {needed} open files, "
            "RLIMIT_NOFILE allows {soft} (raise LimitNOFILE= or ulimit -n); past it new clients are reset",
            n=len(endpoint_specs(config)),
            m=config.limits.max_connections,
            needed=needed,
            soft=soft,
        )
    return soft


def _switch_user(account: Account, config_path: str | None, ports: dict[str, Any]) -> bool:
    """Switch to *account* (endpoints are bound) and load the configuration again as it,
    as SIGHUP will: a file it cannot read stops the start now. :returns: False on failure (logged)."""
    from srsd.privileges import hand_over_state_directory, stranded_sockets, switch_to

    try:
        if config_path is None:
            hand_over_state_directory(account)
        switch_to(account)
        load(config_path)
    except (OSError, ConfigError) as exc:
        log.critical(
            "after switching to user {user}: {error}; every file srsd reads (config, secrets, domains, "
            "DKIM key) must be readable by {user}, SIGHUP reads them again",
            user=account.name,
            error=exc,
        )
        return False
    log.info("running as user {user} (uid {uid}, gid {gid})", user=account.name, uid=account.uid, gid=account.gid)
    for name, path in stranded_sockets(ports):
        log.warn(
            "listen.{name}: {user} cannot write to the directory of {path}: the socket stays behind "
            "when srsd stops (the next start replaces it); use a directory {user} owns, e.g. /run/srsd",
            name=name,
            user=account.name,
            path=path,
        )
    return True


def _store_connection(config: Config) -> tuple:
    """What the running alias store was built from (everything in [store] but max_local_part)."""
    return dataclasses.replace(config.store, max_local_part=0), config.store_password


class ListenError(RuntimeError):
    """An endpoint could not be bound; the message names it."""


def start_log_target(config: Config) -> bool:
    """Send the log where ``log.target`` says (stderr/journal already; syslog from here on).

    :returns: False (logged) when the syslog socket cannot be reached: every line would be lost.
    """
    if config.log.target != "syslog":
        return True
    try:
        OUTPUT.use_syslog(config.log.syslog_socket, config.log.facility)
    except OSError as exc:
        log.critical("log.syslog_socket: cannot send to {path}: {error}", path=config.log.syslog_socket, error=exc)
        return False
    import atexit

    atexit.register(OUTPUT.close)  # what is still queued goes out
    return True


def serve(
    config_path: str | None, workers: int | None = None, inherit: str | None = None, status_fd: int | None = None
) -> int:
    """Run the daemon until SIGTERM/SIGINT (``srsd serve``).

    :param config_path: TOML file, or None for the embedded default.
    :param workers: Twisted processes in all, serving the same endpoints (``--workers``);
        None = ``[daemon] workers``, or when that is 0 :func:`srsd.workers.default_workers`.
        A worker (*inherit* given) is one process.
    :param inherit: (workers only) ``name=deal:N,report=fd:N``: the channel each
        endpoint's connections arrive on (:mod:`srsd.handoff`), the metrics pipe.
    :param status_fd: (workers only) the pipe to the parent (:func:`srsd.workers.tell_parent`).
    :returns: exit status: 0 after a clean stop, 1 when the configuration is
        invalid or an endpoint cannot be bound (the log line names it).
    """
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    from srsd import log_limit
    from srsd.handoff import Dealer
    from srsd.heap import settle_heap
    from srsd.metrics_workers import Reporter, WorkerCounts
    from srsd.privileges import target_account
    from srsd.workers import (
        LOOKUP_PROCESS,
        POLICY_PROCESS,
        WorkerPool,
        default_workers,
        parse_inherit,
        stop_once_on_sigterm,
        tell_parent,
        watch_parent,
    )

    setup_logging()
    try:
        config = load(config_path)
        account = target_account(config.daemon)  # switched to once every endpoint is bound
    except ConfigError as exc:
        log.critical("configuration error: {error}", error=exc)
        return 1
    if not start_log_target(config):
        return 1
    if workers is None:
        if inherit is not None:
            workers = 1
        else:
            # The policy endpoint counts only where the Twisted processes serve it.
            workers = config.daemon.workers or default_workers(
                bool(config.listen.policy) and not config.daemon.policy_processes
            )
    if workers < 1:
        log.critical("--workers: must be at least 1")
        return 1
    if inherit is None:
        log.info(
            "srsd starting: config {source}, SRS domain {domain}, {n} secret(s)",
            source=config.source,
            domain=config.srs.domain,
            n=len(config.secrets),
        )
        if config_path is None and config.srs.domain == "localhost.localdomain":
            log.warn(
                "this host has no fully qualified name: SRS addresses are minted at "
                "localhost.localdomain, which no other host can reach; set srs.domain in a config file"
            )
        log_warnings(config)
    raise_open_files_limit(config)
    served = frozenset(spec.name for spec, _ in endpoint_specs(config))
    # The endpoints served on uvloop, apart from the Twisted process(es): {kind: (processes, names)}.
    apart = {
        LOOKUP_PROCESS: (config.daemon.lookup_processes, served & frozenset(LOOKUP_ENDPOINTS)),
        POLICY_PROCESS: (config.daemon.policy_processes, served & {"policy"}),
    }
    apart = {kind: (n, names) for kind, (n, names) in apart.items() if n and names and inherit is None}
    children = inherit is None and (workers > 1 or bool(apart))
    daemon = Daemon(config, config_path)
    status = {"code": 0}
    pool: list[WorkerPool] = []
    inherited = parse_inherit(inherit) if inherit else None
    report = inherited.pop("report", None) if inherited else None
    # The children's counts reach /metrics through the parent (srsd.metrics_workers).
    child_counts = WorkerCounts() if children else None
    if child_counts is not None:
        daemon.metric_sources = child_counts.snapshots
    LoopingCall(log_limit.tick).start(1.0, now=False)

    def started(ports: Any) -> None:
        if inherit is not None:
            watch_parent(reactor)
            if report is not None:
                Reporter(report[1]).start(reactor)
        elif child_counts is not None:
            # Started while still root: each child switches on its own, as below.
            argv = ["-c", config_path] if config_path else []
            shared = {name: port for name, port in daemon.ports.items() if name != "metrics"}
            # The parent accepts every shared endpoint's connections and hands them out:
            # the lookup and policy endpoints to their uvloop processes alone, the others
            # to the workers and itself.
            elsewhere = frozenset().union(*(names for _, names in apart.values()))
            here = frozenset(name for name in shared if name not in elsewhere)
            dealt = {name: port for name, port in shared.items() if name in elsewhere or workers > 1}
            dealer = Dealer(reactor, dealt, local=here & frozenset(dealt))
            dealer.start()
            daemon.handed = dealer.counts
            child_counts.start(reactor)
            pool.append(
                WorkerPool(reactor, workers, argv, shared, dealer, apart,
                           report_fd=child_counts.child_fd, on_ended=child_counts.retire)
            )  # fmt: skip
            pool[0].start()
        if account is not None and not _switch_user(account, config_path, daemon.ports):
            status["code"] = 1
            reactor.callWhenRunning(reactor.stop)
            return
        if daemon.mailauth is not None:
            daemon.mailauth.start()  # its job processes, as the account just switched to
        if inherit is not None:
            tell_parent(status_fd, "ready")
            return
        daemon.start_store()
        if pool:
            pool[0].ready.addCallbacks(lambda _: ready(), not_ready)
        else:
            ready()

    def ready() -> None:
        n = 1 + (len(pool[0].processes) if pool else 0)
        log.info("srsd ready: {n} endpoint(s), {w} process(es)", n=len(daemon.ports), w=n)
        sd_notify("READY=1")
        reactor.addSystemEventTrigger("before", "shutdown", lambda: log.info("srsd stopping"))

    def not_ready(failure: Any) -> None:
        log.critical("{error}; srsd stops (the child's lines above say why)", error=failure.getErrorMessage())
        status["code"] = 1
        reactor.stop()

    def failed(failure: Any) -> None:
        log.critical("{error}", error=failure.getErrorMessage())
        status["code"] = 1
        # A bind error usually fires before reactor.run(): stop once it runs.
        reactor.callWhenRunning(reactor.stop)

    def on_sighup() -> None:
        if inherit is not None:  # a worker
            d = daemon.reload_off_reactor(announce=False, hold_signer=True)
            d.addCallback(lambda ok: tell_parent(status_fd, "reloaded" if ok else "refused"))
            d.addErrback(lambda failure: log.failure("reload failed; keeping the running configuration", failure))
            return
        sd_notify("RELOADING=1")

        def reloaded(ok: bool) -> defer.Deferred | None:
            if not ok:
                sd_notify("READY=1")  # refused (logged): the children keep the running one too
                return None
            # "reloaded" once every child runs the new configuration: a lookup right after it gets new answers.
            if not pool:
                daemon.announce_reload()
                sd_notify("READY=1")
                return None

            def promote(lagging: int) -> int:
                # Every process verifies the new secrets now: all may sign with the new first one.
                daemon.promote()
                pool[0].signal_all(signal.SIGUSR1)
                return lagging

            lagging = pool[0].reload().addCallback(promote)
            return lagging.addCallback(daemon.announce_reload).addBoth(lambda _: sd_notify("READY=1"))

        d = daemon.reload_off_reactor(announce=False, hold_signer=bool(pool))
        d.addCallback(reloaded)
        d.addErrback(lambda failure: log.failure("reload failed; keeping the running configuration", failure))

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(on_sighup))
    if inherit is not None:  # the parent's word that every process has the new secrets
        signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(daemon.promote))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP, signal.SIGUSR1})  # a child starts with them blocked
    # Before listening: "ready" may be logged (and told systemd) before reactor.run(), and
    # a SIGTERM must find its handler soon after it.
    settle_heap()
    d = daemon.listen(reactor, inherited)
    d.addCallbacks(started, failed)
    reactor.callWhenRunning(stop_once_on_sigterm, reactor)
    reactor.run()
    return status["code"]
