"""The collaborator role: serve the aggregator's rounds for this site's task slots.

The site connects (mutual TLS, WELCOME), announces itself with JOIN and then
answers whatever the aggregator asks, idempotently:

- ROUND_START r: keep/export/evaluate the global adapters it carries, train
  every slot with ``rounds.client_round`` (DP when the plan says so, through
  the site's one ``DPTrainer`` on its persistent ledger), answer SKETCHES.
  The round's results are cached in the workspace first, so a repeated
  ROUND_START (after a restart of either side) is answered from the cache
  without training again.
- ASSIGNMENT r: answer UPDATE with the vectors of the assigned slots.
- FINAL: keep/export/evaluate the final adapters, answer DONE, stop.  A DONE
  lost with its session (the aggregator was killed before acknowledging it)
  is sent again right after the next JOIN; a restarted aggregator accepts it.
- ABORT: stop with the aggregator's reason.

Network breaks and aggregator restarts: the transport's session layer
reconnects and resends; when it gives up the site opens a new session, and
while nothing arrives it repeats JOIN every ``rejoin_s`` so a restarted
aggregator learns about it (and re-sends a request the site never got).
Every failed attempt is logged with the endpoint and the backoff, so a site
started before its aggregator says so instead of waiting silently.  It gives
up once it has had no session for ``timeouts.connect_s`` (at start, or since
the last session that connected), with a message saying what to do.  A refusal (certificate, roster, plan) is final and raised
as is.  A site whose workspace says it finished returns at once, connecting
to nobody.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collaborator.workspace import RoundCache, SiteWorkspace
from fltac_secure.errors import CompressionError, PrivacyError, ProtocolError, StateError, TransportError
from fltac_secure.federation import messages as fm
from fltac_secure.federation import secure_messages as sm
from fltac_secure.federation.compressed import Downlink
from fltac_secure.federation.console import EventLog
from fltac_secure.federation.ledger import LEDGER_NAME, Ledger
from fltac_secure.federation.sizes import record_model_facts
from fltac_secure.federation.storage import pin_plan
from fltac_secure.federation.trimmed import site_labels
from fltac_secure.plan import Plan, Site, hello_sections, plan_hash
from fltac_secure.transport.client import Retry, TransportClient
from fltac_secure.transport.envelope import Message

if TYPE_CHECKING:
    from collaborator.secure import SecureSide
    from fltac_secure.privacy.dp import DPTrainer

RETRYABLE = frozenset({"unreachable", "timeout", "crashed", "closed"})
"""Transport failures worth a fresh session; anything else (a refusal) is final."""


class SimulatedCrash(RuntimeError):
    """Raised by the test hook ``Faults.crash_before``: the site 'dies' before answering."""


@dataclass
class Faults:
    """Test hooks (never set in production): die before sending ``(kind, round)``; quantise with
    ``quantise_rng`` instead of fresh OS randomness (to compare a networked run with the simulator)."""

    crash_before: tuple[str, int] | None = None
    quantise_rng: Any = None


class Collaborator:
    """Runs one site of the federation of ``plan`` from its ``site`` file."""

    def __init__(self, plan: Plan, site: Site, *, log: EventLog | None = None, rejoin_s: float = 5.0,
                 stall_timeout: float = 10.0, patience_s: float | None = None, faults: Faults | None = None) -> None:
        if site.role != "collaborator":
            raise StateError(f"site file for {site.name!r} has role {site.role}; this command needs role collaborator")
        from fltac_secure.learning.adapters import adapter_layout

        self.plan, self.site, self.hash = plan, site, plan_hash(plan)
        self.log = log or EventLog(site.name)
        self.ws = SiteWorkspace(plan, site, self.hash)
        self.shapes = fm.plan_shapes(plan, adapter_layout(plan).size)
        self.rejoin_s, self.stall_timeout = rejoin_s, stall_timeout
        self.patience_s = patience_s if patience_s is not None else plan.timeouts.connect
        self.faults = faults or Faults()
        self.last: tuple[int, str] = (-1, "")  # last aggregator request handled by this process
        self.cache: RoundCache | None = None
        self.downlink: Downlink | None = None  # compression.download_bits: rebuilds the quantised ROUND_START
        self.finished = False
        self.client: TransportClient | None = None
        self.joined = threading.Event()  # set once the aggregator acknowledged a JOIN (tests wait on it)
        self.down_since: float | None = None  # first failure since the last session connected (patience counts from it)
        self.secure: SecureSide | None = None
        self.dp: DPTrainer | None = None  # with privacy.dp: this site's trainer on state/privacy.json (setup)
        self.ever_connected = False  # a session got WELCOME at least once in this process
        self.client_heard = False  # anything ever answered at the endpoint (from each client's ``heard``)

    # -- lifecycle ---------------------------------------------------------------
    def client_for(self) -> TransportClient:
        """A fresh transport client (mutual TLS context from the site file; ledger hook wired)."""
        from fltac_secure.pki import context_for_site

        return TransportClient(
            self.site.aggregator or "", context_for_site(self.site), self.site.name, self.plan.federation, self.hash,
            server_hostname=self.site.server_name,
            max_message_bytes=fm.message_limit(self.plan.limits.max_message_mb, self.shapes, len(self.plan.tasks)),
            handshake_timeout=self.plan.timeouts.handshake_s, stall_timeout=self.stall_timeout,
            ledger_hook=Ledger(Path(self.site.workspace) / LEDGER_NAME, self.site.name),
            hello_meta={"plan_sections": hello_sections(self.plan)}, on_retry=self._retrying,
        )  # fmt: skip

    def _left(self) -> float:
        """Seconds left before giving up (``timeouts.connect_s`` from the first failure without a session)."""
        if self.down_since is None:
            self.down_since = time.monotonic()
        return self.patience_s - (time.monotonic() - self.down_since)

    def _retrying(self, r: Retry) -> None:
        """Each failed attempt, from the transport's I/O thread: say where, why, and when the next one is."""
        left = max(0.0, self._left())
        what = f"lost the aggregator at {r.endpoint}" if r.heard else f"no aggregator at {r.endpoint} yet"
        self.log.warn(f"{what} ({r.why}); next attempt in {r.delay:.1f} s; giving up in {left:.0f} s "
                      "(timeouts.connect_s)")

    def setup(self) -> None:
        """Pin the plan, load data and model (tokenised once), open the DP ledger; ``run`` calls it."""
        pin_plan(Path(self.site.workspace), self.plan)
        record_model_facts(Path(self.site.workspace), self.plan)  # read by `fltac audit` (no model load there)
        stale = self.ws.remove_stale_temps()
        if stale:
            self.log.warn(f"removed {stale} stale temp file(s) left in {self.ws.root / 'state'} by interrupted writes")
        self.log.info(f"loading data and model for task(s) {', '.join(self.ws.tasks)}")
        self.ws.load()
        self.cache = self.ws.load_cache()
        if self.plan.secure_aggregation.enabled:
            from collaborator.secure import SecureSide

            self.secure = SecureSide(self)
        if self.plan.privacy.dp:
            from fltac_secure.privacy.dp import DPTrainer
            from fltac_secure.privacy.ledger import PrivacyLedger

            p = self.plan.privacy
            ledger = PrivacyLedger.open(self.site.workspace, plan_hash=self.hash, delta=p.delta, accountant=p.accountant)
            self.use_dp(DPTrainer(self.ws.model, self.plan, ledger=ledger))

    def use_dp(self, trainer: DPTrainer) -> None:
        """Train every round through ``trainer``: refused unless its ledger is this workspace's persistent one.

        DP on without a persistent ledger is an error in the roles: an in-memory
        ledger would restart the site's epsilon from zero on every restart.
        """
        from fltac_secure.privacy.ledger import ledger_path

        where = ledger_path(self.site.workspace)
        if not self.plan.privacy.dp:
            raise PrivacyError("privacy.dp is off in the plan, so this site trains without DP; a DP trainer "
                               "is refused (set privacy.dp: true to train with DP)")
        path = trainer.ledger.path
        if path is None:  # not persistent (PrivacyLedger.in_memory)
            raise PrivacyError(f"privacy.dp is on but the DP trainer's privacy ledger is in memory only: the "
                               f"site's spent epsilon would restart from zero with the process; a collaborator "
                               f"needs its workspace ledger {where} (PrivacyLedger.open(workspace, ...))")
        if path.resolve() != where.resolve():
            raise PrivacyError(f"the DP trainer's privacy ledger is {path}, not this site's {where}; "
                               "open the ledger of this workspace")
        p = self.plan.privacy
        trainer.ledger.check_matches(plan_hash=self.hash, delta=p.delta, accountant=p.accountant)
        if trainer.model is not self.ws.model:
            raise PrivacyError("the DP trainer wraps another model than this site's; build it on the workspace model")
        self.dp = trainer

    def run(self) -> dict[str, Any]:
        """Serve until FINAL (returns the final metrics per task) or a final error."""
        if self.ws.read_state().get("finished"):
            self.log.info("this site already finished the federation; its adapters are in out/")
            return {}
        if self.ws.model is None:
            self.setup()
        self.down_since = time.monotonic()  # no session yet: the limit counts from now
        while not self.finished:
            try:
                self._session()
            except TransportError as exc:
                if exc.reason not in RETRYABLE:
                    raise
                if self._left() <= 0:
                    raise self._gave_up(exc) from exc
                if self.ever_connected:
                    self.log.warn(f"connection lost ({exc.reason}); reconnecting")
                time.sleep(1.0)
        self.ws.plot()
        return self.final_metrics

    final_metrics: dict[str, Any] = {}

    def _gave_up(self, exc: TransportError) -> TransportError:
        where = self.site.aggregator
        if not self.ever_connected and not self.client_heard:
            return TransportError(
                f"no aggregator at {where}: nothing answered for {self.patience_s:g} s (timeouts.connect_s); start "
                "the aggregator first (`fltac aggregator start`), or check `aggregator` in this site's file, "
                "then run the same command", "unreachable")
        return TransportError(f"the aggregator at {where} has been unreachable for {self.patience_s:g} s "
                              f"(timeouts.connect_s; last: {exc}); giving up - run the same command to resume",
                              exc.reason)

    def _session(self) -> None:
        client = self.client = self.client_for()
        try:
            try:
                client.connect(timeout=max(0.1, self._left()))
            finally:
                self.client_heard = self.client_heard or client.heard
            self.down_since = None
            self.ever_connected = True
            self.log.good(f"connected to {self.site.aggregator}; joining")
            self._join()
            if self.last[1] == fm.FINAL:  # handled FINAL, but its DONE went down with the last session
                self._done(self.last[0])
            quiet_since = time.monotonic()
            while not self.finished:
                msg = client.recv(timeout=0.5)
                if msg is not None:
                    self._handle(msg)
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > self.rejoin_s:
                    self._join()
                    quiet_since = time.monotonic()
        finally:
            client.close()
            self.client = None

    def _send(self, kind: str, r: int, meta: dict | None = None, tensors: dict | None = None) -> None:
        """Send one message to the aggregator (blocks up to round_s for room in the window)."""
        assert self.client is not None
        self.client.send(self.client.message(kind, round=r, meta=meta, tensors=tensors),
                         timeout=self.plan.timeouts.round_s)

    def _join(self) -> None:
        tasks = self.ws.tasks if self.plan.privacy.share_task_names else None
        labels = site_labels(self.plan, self.ws.tasks)  # compression.trim_head: the wire sizes the aggregator expects
        self._send(fm.JOIN, 0, fm.join_meta(self.ws.counts, self.last[0], self.last[1], tasks, labels))
        self.joined.set()

    # -- requests ------------------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        try:
            if msg.kind == fm.ROUND_START:
                self._round_start(msg)
            elif msg.kind == fm.ASSIGNMENT:
                self._assignment(msg)
            elif msg.kind in sm.ANSWER and self.secure is not None:
                self.secure.on_stage(msg)
            elif msg.kind == fm.FINAL:
                self._final(msg)
            elif msg.kind == fm.ABORT:
                raise StateError(f"the aggregator stopped the federation: {fm.parse_abort(msg)}")
            else:
                self.log.warn(f"ignored unexpected {msg.kind} from the aggregator")
        except ProtocolError as exc:
            self.log.error(f"refused {msg.kind} of round {msg.round}: {exc}")

    def _crash_point(self, kind: str, r: int) -> None:
        if self.faults.crash_before == (kind, r):
            raise SimulatedCrash(f"test hook: site dies before sending {kind} of round {r}")

    def _round_start(self, msg: Message) -> None:
        from fltac_secure.federation.rounds import client_round

        r = msg.round
        received = self._starts(msg)
        vectors = self._own(msg, dict(received))
        self.last = (r, fm.ROUND_START)
        if r > 0:
            self._report(self.ws.keep_globals(r, vectors), f"global adapters after round {r - 1}")
        if self.cache is None or self.cache.round != r:
            self.log.info(f"round {r}: training {len(self.ws.slots)} slot(s) x {self.plan.training.local_steps} steps")
            started = time.monotonic()
            starts = {s.key: vectors[i] for i, s in enumerate(self.ws.slots)}
            results = client_round(self.ws.model, self.site.name, self.ws.slots, starts, r, self.plan, dp=self.dp)
            self.cache = self._compress(RoundCache(r, results), starts, received)
            self.ws.save_cache(self.cache)
            self.ws.record_training(r, results)
            losses = ", ".join(f"{self.ws.tasks[_index(x.key)]} {x.stats.get('loss', float('nan')):.3f}" for x in results)
            self.log.info(f"round {r}: trained in {time.monotonic() - started:.1f} s (loss {losses})")
        else:
            self.log.info(f"round {r}: answering from the cached results (no retraining)")
        self._crash_point(fm.SKETCHES, r)
        sketches = {_index(x.key): x.sketch for x in self.cache.results}
        counts = {_index(x.key): x.n_samples for x in self.cache.results}
        meta, tensors = fm.sketches_message_parts(sketches, counts)
        self._send(fm.SKETCHES, r, meta, tensors)
        self.last = (r, fm.SKETCHES)

    def _assignment(self, msg: Message) -> None:
        r = msg.round
        clusters = fm.parse_clusters(msg, len(self.ws.slots), self.shapes)
        if self.cache is None or self.cache.round != r:
            self.log.warn(f"ASSIGNMENT for round {r} but no results of that round here; skipping it")
            return
        self.last = (r, fm.ASSIGNMENT)
        have = {_index(x.key): x.vector for x in self.cache.results}
        if self.secure is not None:
            self.last = (r, fm.UPDATE)
            self._crash_point(sm.SA_KEYS, r)
            if self.plan.compression.enabled:  # the protocol sums updates against the aggregator's starts
                have = {i: v - self.cache.starts[i] for i, v in have.items()}
            self.secure.on_assignment(msg, clusters, have, {_index(x.key): x.n_samples for x in self.cache.results})
            return
        wanted = {i: have[i] for i, c in enumerate(clusters) if c >= 0 and i in have}
        self._crash_point(fm.UPDATE, r)
        if self.plan.compression.enabled:
            self._send_quantised(r, sorted(wanted))
        else:
            self._send(fm.UPDATE, r, tensors=fm.vector_tensors(self.ws.wire.out(wanted)))
        self.last = (r, fm.UPDATE)
        self.log.info(f"round {r}: sent {len(wanted)} adapter(s) for clusters {[c for c in clusters if c >= 0]}")

    def _compress(self, cache: RoundCache, starts: dict[str, Any], received: dict[int, Any]) -> RoundCache:
        """With compression: quantise each slot's update (plus its residual) now, so a repeated request
        is answered with the same bytes; the residuals are committed only when the UPDATE goes out.
        Under secure aggregation the updates are quantised inside the protocol, against the vectors the
        aggregator sent (``received``, kept in the cache: the aggregator adds back those starts)."""
        if not self.plan.compression.enabled or not cache.results:
            return cache
        if self.plan.secure_aggregation.enabled:
            cache.starts = {i: v for i, v in received.items() if i in {_index(x.key) for x in cache.results}}
            return cache
        from fltac_secure.federation.compressed import compress_results

        wire, idx = self.ws.wire, [_index(x.key) for x in cache.results]  # trim_head: updates of the wire parts
        every = wire.sizes(range(len(self.ws.slots))) or self.shapes.vector_size  # the file holds any slot's
        residuals = {_key(self.site.name, i): v for i, v in self.ws.read_residuals(every).items()}
        parts = wire.out({_index(x.key): x.vector for x in cache.results})
        origins = wire.out({_index(k): v for k, v in starts.items()})
        sent = compress_results(self.plan, {_key(self.site.name, i): parts[i] for i in idx},
                                {_key(self.site.name, i): origins[i] for i in idx}, residuals,
                                rng=self.faults.quantise_rng)
        cache.updates = {_index(k): u.q for k, u in sent.items()}
        cache.residuals = {_index(k): u.residual for k, u in sent.items() if u.residual is not None}
        return cache

    def _send_quantised(self, r: int, wanted: list[int]) -> None:
        """UPDATE with the cached quantised updates; error-feedback residuals committed first (idempotent:
        a repeated ASSIGNMENT writes the same values, and a crash before sending loses nothing)."""
        assert self.cache is not None
        sizes = self.ws.wire.sizes(range(len(self.ws.slots)))
        if self.plan.compression.error_feedback:
            self.ws.commit_residuals(r, {i: self.cache.residuals[i] for i in wanted}, sizes or self.shapes.vector_size)
        meta, tensors = fm.quantised_message_parts({i: self.cache.updates[i] for i in wanted}, self.shapes, sizes)
        self._send(fm.UPDATE, r, meta, tensors)

    def _starts(self, msg: Message) -> dict[int, Any]:
        """ROUND_START's start vector per slot: float32 wire parts untrimmed, or with ``download_bits`` the
        plan's initial adapter plus each slot's dequantised difference (``Downlink``, as the aggregator
        computes it)."""
        if not self.plan.compression.download:
            return self._vectors(msg)
        slots, wire = range(len(self.ws.slots)), self.ws.wire
        sent = fm.parse_quantised(msg, slots, self.shapes, wire.sizes(slots))
        if self.downlink is None:
            self.downlink = Downlink.of(self.plan, wire.trimmer)
        try:
            return {i: self.downlink.receive(q, None if wire.trimmer is None else wire.labels[i]) for i, q in sent.items()}
        except CompressionError as exc:
            raise ProtocolError(f"ROUND_START of round {msg.round}: {exc}", "bad_shape") from None

    def _vectors(self, msg: Message) -> dict[int, Any]:
        """ROUND_START's or FINAL's full vector per slot: the wire parts (sizes from the plan) untrimmed."""
        slots = range(len(self.ws.slots))
        return self.ws.wire.back(fm.parse_vectors(msg, slots, self.shapes, self.ws.wire.sizes(slots)))

    def _own(self, msg: Message, vectors: dict[int, Any]) -> dict[int, Any]:
        """Slots whose cluster was not securely summed continue from this site's own trained vector."""
        own = sm.parse_own(msg, len(self.ws.slots))
        have = {_index(x.key): x.vector for x in self.cache.results} if self.cache is not None else {}
        for i, rr in own.items():
            if self.cache is not None and self.cache.round == rr and i in have:
                vectors[i] = have[i]
            else:
                self.log.warn(f"slot {self.ws.tasks[i]}: no own adapter of round {rr} here (restarted without its "
                              "cache?); continuing from the aggregator's last vector for it")  # fmt: skip
        return vectors

    def _final(self, msg: Message) -> None:
        vectors = self._own(msg, self._vectors(msg))
        clusters = fm.parse_clusters(msg, len(self.ws.slots), self.shapes)
        self.last = (msg.round, fm.FINAL)
        rows = self.ws.keep_globals(msg.round, vectors, final=True)
        self._report(rows, "final global adapters")
        self.final_metrics = {row["task"]: row for row in rows}
        self.ws.write_state(round_done=msg.round - 1, finished=True, clusters=clusters)
        self._done(msg.round)

    def _done(self, r: int) -> None:
        self._crash_point(fm.DONE, r)
        self._send(fm.DONE, r)
        self.finished = True
        self.log.good(f"done: final adapters in {Path(self.site.workspace) / 'out'}")

    def _report(self, rows: list[dict[str, Any]], what: str) -> None:
        if rows:
            accs = ", ".join(f"{row['task']} {row['accuracy']:.3f}" for row in rows)
            self.log.info(f"{what}: local test accuracy {accs}")


def _index(key: str) -> int:
    return int(key.rsplit("/", 1)[1])


def _key(site: str, index: int) -> str:
    from fltac_secure.federation.rounds import slot_key

    return slot_key(site, index)

