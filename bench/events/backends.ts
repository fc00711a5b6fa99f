/**
 * The event log's backends side by side (issue 27), in one run on the same payloads: the
 * Postgres backend (`PgEventLog`), the JetStream backend (`JetStreamEventLog`) and, as the
 * baseline, a raw `@nats-io/jetstream` client on the same nats-server.
 *
 * Postgres is a fresh database as in the other event benchmarks. NATS is a `nats-server -js`
 * started by the benchmark with `NatsSupervisor` (free ports on 127.0.0.1, its store in a
 * temporary directory, both gone at the end). Every event is a `job.log` with ~200 bytes of JSON
 * data.
 *
 * - **Append**: producers (1 and 16) each await one append after another of a batch (1 and 100
 *   events). Postgres starts each measurement from an empty table after a CHECKPOINT; JetStream
 *   and the raw client each get a fresh stream. The raw client publishes the messages the log
 *   would (its own `subjectOf` and `encode`, encoded once beforehand) to a stream of the log's
 *   configuration, each with a `Nats-Msg-Id` as the log sends them: a batch is one `js.publish` a
 *   message, all sent at once and their acks awaited together, on one connection for all
 *   producers, as the log's writer has.
 * - **Replay**: N events appended, then read from offset 1, each reader `BENCH_BACKENDS_REPEAT`
 *   times in rounds (median reported): `log.read` page after page (10,000), `log.subscribe` from
 *   offset 1 taking N; on the JetStream log's stream, a raw ordered consumer (the log's page of
 *   2,048 messages) counting the messages, and decoding them as the log does.
 * - **Latency**: a live subscriber (`log.subscribe(Latest)` filtered to the benchmark's job; raw:
 *   a core subscription and an ordered consumer on that subject, both at once), then appends of
 *   one event at a fixed rate, each started on time whether or not the one before was
 *   acknowledged. Latency is from the append call (raw: the publish) to the subscriber's receipt,
 *   on this process's clock.
 *
 * Env: BENCH_BACKENDS_EVENTS (events an append measurement, 100000), BENCH_BACKENDS_MAX_SECONDS
 * (cap of one append measurement, 5), BENCH_BACKENDS_WARMUP_SECONDS (cap of the warm-up of
 * EVENTS / 20 events, 1), BENCH_BACKENDS_PRODUCERS (1,16), BENCH_BACKENDS_BATCHES (1,100),
 * BENCH_BACKENDS_REPLAY (events replayed, 200000), BENCH_BACKENDS_REPEAT (rounds of replay, 3),
 * BENCH_BACKENDS_REPLAY_MAX_SECONDS (cap of one read, 10), BENCH_BACKENDS_LATENCY_EVENTS (2000),
 * BENCH_BACKENDS_LATENCY_RATE (events a second, 200), BENCH_BACKENDS_LATENCY_WARMUP (unmeasured
 * events first, 100), BENCH_BACKENDS_SYSTEMS (postgres,jetstream,raw), BENCH_BACKENDS_PARTS
 * (append,replay,latency), DATABASE_URL.
 */
import { connect, type Msg, type NatsConnection } from "@nats-io/transport-node"
import {
  DeliverPolicy,
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  RetentionPolicy,
  StorageType
} from "@nats-io/jetstream"
import { Context, Duration, Effect, Either, Fiber, Layer, Redacted, type Scope, Stream } from "effect"
import * as NatsSupervisor from "../../actors/supervisors/NatsSupervisor.js"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import * as JetStreamEventLog from "../../infra/eventlog/JetStreamEventLog.js"
import * as PgEventLog from "../../infra/eventlog/PgEventLog.js"
import { EventFilter, NewEvent, type StoredEvent } from "../../rpc/Events.js"
import { tempDir } from "../../test/support/TempDir.js"
import * as Sessions from "../sessions/harness.js"
import * as Harness from "./harness.js"

type Log = EventLog["Type"]

const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/** A promise as an effect that fails with a `BenchError` saying what was being done. */
const promise = <A>(what: string, run: () => Promise<A>): Effect.Effect<A, Harness.BenchError> =>
  Effect.tryPromise({
    try: run,
    catch: (cause) => new Harness.BenchError({ message: `${what}: ${messageOf(cause)}` })
  })

// Payloads ----------------------------------------------------------------------------------

const source = { nodeId: "bench", component: "bench" }
/** With this chunk a `job.log`'s JSON data is ~200 bytes. */
const chunk = "x".repeat(110)
const latencyJob = "bench-latency"

const jobLog = (jobId: string, seq: number): NewEvent =>
  NewEvent.make({
    type: "job.log",
    source,
    jobId,
    data: { jobId, seq, stream: "stdout", chunk, ts: new Date().toISOString() }
  })

const dataBytes = Buffer.byteLength(JSON.stringify(jobLog("job-0", 1234).data), "utf8")

/** The batch one producer appends again and again (ids and offsets are fresh on every append). */
const batchOf = (producer: number, size: number): ReadonlyArray<NewEvent> =>
  Array.from({ length: size }, (_, n) => jobLog(`job-${producer}`, n))

/** The `seq` of a `job.log`'s data, if it has one. */
const seqOf = (data: unknown): number | undefined =>
  typeof data === "object" && data !== null && "seq" in data && typeof data.seq === "number"
    ? data.seq
    : undefined

const everything = EventFilter.make({})
const latencyFilter = EventFilter.make({ types: ["job.log"], jobId: latencyJob })

// Appending ---------------------------------------------------------------------------------

/** What an append measurement achieved. */
interface Measured {
  readonly events: number
  readonly millis: number
  /** Milliseconds each append took, as its producer saw it. */
  readonly latencies: ReadonlyArray<number>
}

const perSecond = (m: Measured): number => (m.events * 1000) / m.millis
const noMeasurement: Measured = { events: 0, millis: Number.NaN, latencies: [] }

/**
 * Runs `producers` concurrent loops, each awaiting `appendOnce` (one batch of `batch` events)
 * until `total` events are written between them or `maxMillis` has passed.
 */
const drive = <E, R>(
  producers: number,
  batch: number,
  total: number,
  maxMillis: number,
  appendOnce: (producer: number) => Effect.Effect<unknown, E, R>
): Effect.Effect<Measured, E, R> =>
  Effect.suspend(() => {
    let remaining = Math.ceil(total / batch)
    let appends = 0
    const latencies: Array<number> = []
    const start = Harness.now()
    const deadline = start + maxMillis
    const producer = (p: number) =>
      Effect.gen(function* () {
        while (remaining > 0 && Harness.now() < deadline) {
          remaining--
          const t0 = Harness.now()
          yield* appendOnce(p)
          latencies.push(Harness.now() - t0)
          appends++
        }
      })
    return Effect.forEach(
      Array.from({ length: producers }, (_, p) => p),
      producer,
      { concurrency: "unbounded", discard: true }
    ).pipe(Effect.map(() => ({ events: appends * batch, millis: Harness.now() - start, latencies })))
  })

/** An encoded message, as the JetStream log would publish it. */
interface Outgoing {
  readonly subject: string
  readonly body: Uint8Array
}

/** `events` as the JetStream log would publish them under `prefix`. */
const encodeAll = (prefix: string, events: ReadonlyArray<NewEvent>): ReadonlyArray<Outgoing> => {
  const now = Date.now()
  return events.map((event) => {
    const row = Either.getOrThrow(PgEventLog.toRow(event, now))
    return { subject: JetStreamEventLog.subjectOf(prefix, row), body: JetStreamEventLog.encode(row) }
  })
}

// NATS --------------------------------------------------------------------------------------

/** The benchmark's own nats-server and a raw client connection to it. */
interface Nats {
  readonly server: NatsSupervisor.NatsSupervisor["Type"]
  readonly nc: NatsConnection
  readonly js: JetStreamClient
  readonly jsm: JetStreamManager
}

/** A supervised nats-server on free loopback ports with its store in a temporary directory. */
const bundledNats: Effect.Effect<Nats, Harness.BenchError, Scope.Scope> = Effect.gen(function* () {
  const dir = yield* tempDir("vibes-bench-nats-")
  const server = yield* NatsSupervisor.make({ dataDir: dir, maxRestarts: 2 }).pipe(
    Effect.mapError((error) => new Harness.BenchError({ message: error.message }))
  )
  const nc = yield* Effect.acquireRelease(
    promise("cannot connect to the bundled nats-server", () =>
      connect({ servers: server.url, token: Redacted.value(server.token), name: "vibes-bench-raw" })
    ),
    (connection) => Effect.promise(() => connection.close().catch(() => undefined))
  )
  const jsm = yield* promise("JetStream is not available", () => jetstreamManager(nc))
  return { server, nc, js: jetstream(nc, { timeout: 10_000 }), jsm }
})

/** A stream's and its subjects' names, fresh for each use. */
interface Names {
  readonly stream: string
  readonly prefix: string
}

const dropStreams = (nats: Nats, streams: ReadonlyArray<string>) =>
  Effect.promise(() => Promise.all(streams.map((name) => nats.jsm.streams.delete(name).catch(() => false))))

/** A JetStream log on its own fresh stream, deleted with the scope. */
const jetStreamLog = (nats: Nats, names: Names) =>
  Effect.gen(function* () {
    yield* Effect.addFinalizer(() => dropStreams(nats, [names.stream, `${names.stream}_OFFSETS`]))
    const context = yield* Layer.build(
      JetStreamEventLog.layer({
        url: nats.server.url,
        token: nats.server.token,
        stream: names.stream,
        prefix: names.prefix,
        nodeId: "bench"
      })
    )
    return Context.get(context, EventLog)
  })

/** A fresh stream configured as the JetStream log configures its own, deleted with the scope. */
const rawStream = (nats: Nats, names: Names) =>
  Effect.acquireRelease(
    promise(`cannot create the stream ${names.stream}`, () =>
      nats.jsm.streams.add({
        name: names.stream,
        subjects: [`${names.prefix}.>`],
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        discard: DiscardPolicy.Old,
        allow_direct: true,
        num_replicas: 1,
        max_msgs_per_subject: -1,
        duplicate_window: 120_000_000_000
      })
    ),
    () => dropStreams(nats, [names.stream])
  )

// Latency -----------------------------------------------------------------------------------

/** Receipt times (by `seq`) of one subscriber. */
type Receipts = Map<number, number>

/** What one latency run saw: for each subscriber, append-to-receipt milliseconds of each event. */
interface Delivered {
  readonly latencies: ReadonlyArray<ReadonlyArray<number>>
  readonly received: ReadonlyArray<number>
  /** Append (raw: publish) to acknowledgement, milliseconds. */
  readonly acks: ReadonlyArray<number>
}

/**
 * Once every subscriber in `receipts` has seen a probe (sent with seq -1 until they have), sends
 * `warmup + count` events with `send(seq)` at `rate` a second, each on time, and collects the
 * latencies of the last `count`.
 */
const openLoop = <E>(options: {
  readonly send: (seq: number) => Effect.Effect<unknown, E>
  readonly receipts: ReadonlyArray<Receipts>
  readonly warmup: number
  readonly count: number
  readonly rate: number
  readonly drainMillis: number
}) =>
  Effect.gen(function* () {
    const { send, receipts, warmup, count, rate } = options
    const live = () => receipts.every((r) => r.has(-1))
    for (let probe = 0; probe < 100 && !live(); probe++) {
      yield* send(-1)
      const until = Harness.now() + 100
      while (!live() && Harness.now() < until) yield* Effect.sleep("5 millis")
    }
    if (!live()) return yield* new Harness.BenchError({ message: "a subscriber never received a probe" })

    const total = warmup + count
    const sentAt: Array<number> = []
    const acks: Array<number> = []
    const fibers: Array<Fiber.Fiber<unknown, E>> = []
    const interval = 1000 / rate
    const start = Harness.now()
    for (let seq = 0; seq < total; seq++) {
      const wait = start + seq * interval - Harness.now()
      if (wait > 0) yield* Effect.sleep(Duration.millis(wait))
      const t0 = Harness.now()
      sentAt[seq] = t0
      const acked = Effect.sync(() => {
        if (seq >= warmup) acks.push(Harness.now() - t0)
      })
      fibers.push(yield* Effect.fork(Effect.zipRight(send(seq), acked)))
    }
    yield* Fiber.joinAll(fibers)
    const complete = () =>
      receipts.every((r) => {
        for (let seq = warmup; seq < total; seq++) if (!r.has(seq)) return false
        return true
      })
    const deadline = Harness.now() + options.drainMillis
    while (!complete() && Harness.now() < deadline) yield* Effect.sleep("10 millis")

    const latencies = receipts.map((r) => {
      const out: Array<number> = []
      for (let seq = warmup; seq < total; seq++) {
        const at = r.get(seq)
        const sent = sentAt[seq]
        if (at !== undefined && sent !== undefined) out.push(at - sent)
      }
      return out
    })
    const delivered: Delivered = { latencies, received: latencies.map((l) => l.length), acks }
    return delivered
  })

/** Records each event's receipt by its data's `seq` (probes as -1). */
const recordInto =
  (receipts: Receipts) =>
  (event: StoredEvent): void => {
    const seq = seqOf(event.data)
    if (seq !== undefined && !receipts.has(seq)) receipts.set(seq, Harness.now())
  }

// Reporting ---------------------------------------------------------------------------------

const latencyCell = (values: ReadonlyArray<number>) =>
  `${Harness.millis(Harness.percentile(values, 50))} / ${Harness.millis(Harness.percentile(values, 99))}`

const yesNo = (met: boolean) => (met ? "yes" : "**no**")

// Main --------------------------------------------------------------------------------------

const main = Effect.gen(function* () {
  const total = Harness.envInt("BENCH_BACKENDS_EVENTS", 100_000)
  const maxMillis = Harness.envInt("BENCH_BACKENDS_MAX_SECONDS", 5) * 1000
  const warmupMillis = Harness.envInt("BENCH_BACKENDS_WARMUP_SECONDS", 1) * 1000
  const producerCounts = Harness.envInts("BENCH_BACKENDS_PRODUCERS", [1, 16])
  const batchSizes = Harness.envInts("BENCH_BACKENDS_BATCHES", [1, 100])
  const replayTotal = Harness.envInt("BENCH_BACKENDS_REPLAY", 200_000)
  const repeat = Harness.envInt("BENCH_BACKENDS_REPEAT", 3)
  const replayMaxMillis = Harness.envInt("BENCH_BACKENDS_REPLAY_MAX_SECONDS", 10) * 1000
  const latencyCount = Harness.envInt("BENCH_BACKENDS_LATENCY_EVENTS", 2000)
  const latencyRate = Harness.envInt("BENCH_BACKENDS_LATENCY_RATE", 200)
  const latencyWarmup = Harness.envInt("BENCH_BACKENDS_LATENCY_WARMUP", 100)
  const systems = Harness.envList("BENCH_BACKENDS_SYSTEMS", ["postgres", "jetstream", "raw"])
  const parts = Harness.envList("BENCH_BACKENDS_PARTS", ["append", "replay", "latency"])
  const runLines = Sessions.runLines()

  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const pgContext = yield* Layer.build(PgEventLog.layer().pipe(Layer.provideMerge(Harness.sqlLayer(db))))
  const pg = Context.get(pgContext, EventLog)
  const admin = yield* Harness.rawClient(db)
  const truncate = Harness.rawQuery(admin, "TRUNCATE vibes_events")
  const checkpoint = Harness.rawQuery(admin, "CHECKPOINT")

  yield* Harness.progress("starting nats-server")
  const nats = yield* bundledNats
  const natsVersion = nats.nc.info?.version ?? "?"
  let streams = 0
  const freshNames = (): Names => {
    streams++
    return { stream: `BENCH_${streams}`, prefix: `bench${streams}` }
  }
  let published = 0
  const nextMsgId = () => `bench-${++published}`

  const summary: Array<string> = []
  const sections: Array<string> = []

  // Append ----------------------------------------------------------------------------------

  if (parts.includes("append")) {
    const rows: Array<string> = []
    for (const batch of batchSizes) {
      for (const producers of producerCounts) {
        const batches = Array.from({ length: producers }, (_, p) => batchOf(p, batch))
        const batchFor = (p: number) => batches[p] ?? batchOf(p, batch)
        const measure = <E>(name: string, appendOnce: (p: number) => Effect.Effect<unknown, E>) =>
          Effect.gen(function* () {
            yield* drive(producers, batch, Math.ceil(total / 20), warmupMillis, appendOnce)
            const measured = yield* drive(producers, batch, total, maxMillis, appendOnce)
            yield* Harness.progress(
              `append, ${name}, ${producers} producers × ${batch}: ${Harness.count(perSecond(measured))} events/s ` +
                `(${Harness.count(measured.events)} events in ${Harness.millis(measured.millis)} ms)`
            )
            return measured
          })

        const postgres = systems.includes("postgres")
          ? yield* Effect.zipRight(
              Effect.zipRight(truncate, checkpoint),
              measure("Postgres", (p) => pg.append(batchFor(p)))
            )
          : noMeasurement
        const jetStream = systems.includes("jetstream")
          ? yield* Effect.scoped(
              Effect.flatMap(jetStreamLog(nats, freshNames()), (log) =>
                measure("JetStream", (p) => log.append(batchFor(p)))
              )
            )
          : noMeasurement
        const raw = systems.includes("raw")
          ? yield* Effect.scoped(
              Effect.gen(function* () {
                const names = freshNames()
                yield* rawStream(nats, names)
                const messages = batches.map((events) => encodeAll(names.prefix, events))
                return yield* measure("raw JetStream client", (p) =>
                  promise("raw publish", () =>
                    Promise.all(
                      (messages[p] ?? []).map((m) =>
                        nats.js.publish(m.subject, m.body, { msgID: nextMsgId() })
                      )
                    )
                  )
                )
              })
            )
          : noMeasurement

        const js = perSecond(jetStream)
        const vsRaw = js / perSecond(raw)
        const fast = producers >= 16 ? js >= 100_000 : undefined
        rows.push(
          Harness.row([
            producers,
            batch,
            Harness.count(perSecond(postgres)),
            latencyCell(postgres.latencies),
            Harness.count(js),
            latencyCell(jetStream.latencies),
            Harness.count(perSecond(raw)),
            latencyCell(raw.latencies),
            Harness.ratio(js, perSecond(raw)),
            Harness.ratio(js, perSecond(postgres)),
            yesNo(vsRaw >= 0.7),
            fast === undefined ? "–" : yesNo(fast)
          ])
        )
        summary.push(
          Harness.row([
            `append, ${producers} producer${producers === 1 ? "" : "s"} × ${batch}`,
            producers >= 16 ? "≥ 100,000 events/s and ≥ 0.7x raw" : "≥ 0.7x raw",
            `${Harness.count(js)}/s, ${Harness.ratio(js, perSecond(raw))} raw (Postgres ${Harness.count(perSecond(postgres))}/s)`,
            yesNo(vsRaw >= 0.7 && fast !== false)
          ])
        )
      }
    }
    sections.push(
      [
        "\n#### Append throughput and latency\n",
        `Each producer awaits one append after another; up to ${Harness.count(total)} events a measurement ` +
          `(capped at ${maxMillis / 1000} s) after a warm-up. Latency is one append call, as its producer saw it.\n`,
        Harness.header([
          "producers",
          "events/append",
          "Postgres events/s",
          "Postgres p50 / p99 ms",
          "JetStream events/s",
          "JetStream p50 / p99 ms",
          "raw client events/s",
          "raw p50 / p99 ms",
          "JetStream / raw",
          "JetStream / Postgres",
          "≥ 0.7x raw",
          "≥ 100k/s (16 producers)"
        ]),
        ...rows
      ].join("\n")
    )
  }

  // Replay ----------------------------------------------------------------------------------

  if (parts.includes("replay")) {
    const fill = (log: Log) =>
      Effect.gen(function* () {
        const batch = Array.from({ length: 1000 }, (_, n) => jobLog(`job-${n % 10}`, n))
        const [, millis] = yield* Harness.timed(
          Effect.forEach(
            Array.from({ length: Math.ceil(replayTotal / batch.length) }),
            (_, i) => log.append(batch.slice(0, Math.min(batch.length, replayTotal - i * batch.length))),
            { concurrency: 4, discard: true }
          )
        )
        return millis
      })
    const logReaders = (name: string, log: Log) =>
      [
        [
          `${name}: read, pages of 10,000`,
          Effect.gen(function* () {
            let events = 0
            let from = 1
            const start = Harness.now()
            while (events < replayTotal && Harness.now() - start < replayMaxMillis) {
              const page = yield* log.read(from, everything, 10_000)
              const last = page[page.length - 1]
              if (last === undefined) break
              events += page.length
              from = last.offset + 1
            }
            return { events, millis: Harness.now() - start }
          })
        ],
        [
          `${name}: subscribe from offset 1, take N`,
          Effect.gen(function* () {
            const start = Harness.now()
            const events = yield* log
              .subscribe({ _tag: "Offset", offset: 1 }, everything)
              .pipe(Stream.take(replayTotal), Stream.interruptAfter(replayMaxMillis), Stream.runCount)
            return { events, millis: Harness.now() - start }
          })
        ]
      ] as const
    const orderedConsumer = (names: Names, decode: boolean) =>
      promise("raw ordered consumer", async () => {
        const start = Harness.now()
        const consumer = await nats.js.consumers.get(names.stream, {
          filter_subjects: `${names.prefix}.>`,
          deliver_policy: DeliverPolicy.StartSequence,
          opt_start_seq: 1
        })
        const messages = await consumer.consume({ max_messages: 2048 })
        const cap = setTimeout(() => messages.stop(), replayMaxMillis)
        let events = 0
        try {
          for await (const message of messages) {
            if (decode && Either.isLeft(JetStreamEventLog.decode(message.seq, message.data))) {
              throw new Error(`message ${message.seq} is not an event`)
            }
            if (++events >= replayTotal) break
          }
        } finally {
          clearTimeout(cap)
          messages.stop()
          await consumer.delete().catch(() => false)
        }
        return { events, millis: Harness.now() - start }
      })

    yield* Effect.scoped(
      Effect.gen(function* () {
        const readers: Array<readonly [string, Effect.Effect<{ events: number; millis: number }, unknown>]> =
          []
        if (systems.includes("postgres")) {
          yield* truncate
          yield* Harness.progress(`replay: filling Postgres with ${Harness.count(replayTotal)} events`)
          const millis = yield* fill(pg)
          yield* Harness.rawQuery(admin, "VACUUM ANALYZE vibes_events")
          yield* Harness.progress(`replay: Postgres filled in ${Harness.millis(millis)} ms`)
          readers.push(...logReaders("Postgres", pg))
        }
        if (systems.includes("jetstream") || systems.includes("raw")) {
          const names = freshNames()
          const log = yield* jetStreamLog(nats, names)
          yield* Harness.progress(`replay: filling JetStream with ${Harness.count(replayTotal)} events`)
          const millis = yield* fill(log)
          yield* Harness.progress(`replay: JetStream filled in ${Harness.millis(millis)} ms`)
          if (systems.includes("jetstream")) readers.push(...logReaders("JetStream", log))
          if (systems.includes("raw")) {
            readers.push(["raw JetStream: ordered consumer", orderedConsumer(names, false)])
            readers.push(["raw JetStream: ordered consumer + decode", orderedConsumer(names, true)])
          }
        }

        const results = new Map<string, Array<{ events: number; millis: number }>>()
        for (let round = 1; round <= repeat; round++) {
          for (const [name, reader] of readers) {
            const read = yield* reader
            results.set(name, [...(results.get(name) ?? []), read])
            yield* Harness.progress(
              `replay round ${round}, ${name}: ${Harness.count((read.events * 1000) / read.millis)} events/s ` +
                `(${Harness.count(read.events)} in ${Harness.millis(read.millis)} ms)`
            )
          }
        }
        const rate = (read: { events: number; millis: number }) => (read.events * 1000) / read.millis
        const medianRate = (name: string) => Harness.median((results.get(name) ?? []).map(rate))
        const baseline = medianRate("raw JetStream: ordered consumer")
        const rows = readers.map(([name]) => {
          const reads = results.get(name) ?? []
          const median = medianRate(name)
          const isJetStream = name.startsWith("JetStream")
          return Harness.row([
            name,
            Harness.count(Harness.median(reads.map((r) => r.events))),
            Harness.count(median),
            reads.map((r) => Harness.count(rate(r))).join(", "),
            Harness.ratio(median, baseline),
            isJetStream ? "≥ 300,000/s" : "–",
            isJetStream ? yesNo(median >= 300_000) : "–"
          ])
        })
        for (const [name] of readers.filter(([name]) => name.startsWith("JetStream"))) {
          const median = medianRate(name)
          summary.push(
            Harness.row([
              `replay, ${name.slice("JetStream: ".length)}`,
              "≥ 300,000 events/s",
              `${Harness.count(median)}/s, ${Harness.ratio(median, baseline)} raw (Postgres ${Harness.count(medianRate(name.replace("JetStream", "Postgres")))}/s)`,
              yesNo(median >= 300_000)
            ])
          )
        }
        sections.push(
          [
            "\n#### Replay from offset 1\n",
            `${Harness.count(replayTotal)} events appended (batches of 1,000, 4 at a time), then read whole; ` +
              `${repeat === 1 ? "one round" : `median of ${repeat} rounds (each round: every reader once, in table order)`}.\n`,
            Harness.header([
              "reader",
              "events read",
              "median events/s",
              "all rounds events/s",
              "vs raw ordered consumer",
              "target",
              "met"
            ]),
            ...rows
          ].join("\n")
        )
      })
    )
  }

  // Latency ---------------------------------------------------------------------------------

  if (parts.includes("latency")) {
    const loop = {
      warmup: latencyWarmup,
      count: latencyCount,
      rate: latencyRate,
      drainMillis: 5000
    }
    const throughLog = (name: string, log: Log) =>
      Effect.scoped(
        Effect.gen(function* () {
          const receipts: Receipts = new Map()
          yield* log.subscribe({ _tag: "Latest" }, latencyFilter).pipe(
            Stream.runForEach((event) => Effect.sync(() => recordInto(receipts)(event))),
            Effect.forkScoped
          )
          yield* Harness.progress(`latency, ${name}: ${latencyCount} events at ${latencyRate}/s`)
          return yield* openLoop({
            ...loop,
            send: (seq) => log.append([jobLog(latencyJob, seq)]),
            receipts: [receipts]
          })
        })
      )
    const none: Delivered = { latencies: [[], []], received: [0, 0], acks: [] }

    const postgres = systems.includes("postgres") ? yield* throughLog("Postgres", pg) : none
    const jetStream = systems.includes("jetstream")
      ? yield* Effect.scoped(
          Effect.flatMap(jetStreamLog(nats, freshNames()), (log) => throughLog("JetStream", log))
        )
      : none
    const raw = systems.includes("raw")
      ? yield* Effect.scoped(
          Effect.gen(function* () {
            const names = freshNames()
            yield* rawStream(nats, names)
            const total = latencyWarmup + latencyCount
            const probe = encodeAll(names.prefix, [jobLog(latencyJob, -1)])
            const events = encodeAll(
              names.prefix,
              Array.from({ length: total }, (_, seq) => jobLog(latencyJob, seq))
            )
            const subject = probe[0]?.subject ?? `${names.prefix}.>`
            const core: Receipts = new Map()
            const ordered: Receipts = new Map()
            // The seq rides in the message id, so receivers need not decode the body.
            const record = (receipts: Receipts, id: string | undefined) => {
              const seq = id === undefined ? Number.NaN : Number(id.slice(id.indexOf(":") + 1))
              if (Number.isInteger(seq) && !receipts.has(seq)) receipts.set(seq, Harness.now())
            }
            yield* Effect.acquireRelease(
              Effect.sync(() =>
                nats.nc.subscribe(subject, {
                  callback: (error, message: Msg) => {
                    if (error === null) record(core, message.headers?.get("Nats-Msg-Id"))
                  }
                })
              ),
              (subscription) => Effect.sync(() => subscription.unsubscribe())
            )
            const consumer = yield* promise("raw ordered consumer", () =>
              nats.js.consumers.get(names.stream, {
                filter_subjects: subject,
                deliver_policy: DeliverPolicy.New
              })
            )
            const messages = yield* Effect.acquireRelease(
              promise("raw ordered consumer", () => consumer.consume({ max_messages: 2048 })),
              (m) =>
                Effect.promise(async () => {
                  m.stop()
                  await consumer.delete().catch(() => false)
                })
            )
            yield* Effect.forkScoped(
              Effect.promise(async () => {
                for await (const message of messages) record(ordered, message.headers?.get("Nats-Msg-Id"))
              })
            )
            yield* Harness.progress(
              `latency, raw JetStream client: ${latencyCount} events at ${latencyRate}/s`
            )
            let probes = 0
            return yield* openLoop({
              ...loop,
              send: (seq) => {
                const message = seq < 0 ? probe[0] : events[seq]
                // Message ids are `<unique>:<seq>`: fresh for the stream's de-duplication, seq for the receivers.
                const msgID = seq < 0 ? `probe-${++probes}:-1` : `${nextMsgId()}:${seq}`
                return message === undefined
                  ? Effect.void
                  : promise("raw publish", () => nats.js.publish(message.subject, message.body, { msgID }))
              },
              receipts: [core, ordered]
            })
          })
        )
      : none

    const rows: Array<string> = []
    const latencyRow = (name: string, delivered: Delivered, index: number, target: boolean) => {
      const values = delivered.latencies[index] ?? []
      const p99 = Harness.percentile(values, 99)
      rows.push(
        Harness.row([
          name,
          `${Harness.count(delivered.received[index] ?? 0)} / ${Harness.count(latencyCount)}`,
          Harness.millis(Harness.percentile(values, 50)),
          Harness.millis(p99),
          Harness.millis(Harness.percentile(values, 100)),
          latencyCell(delivered.acks),
          target ? "p99 ≤ 10 ms" : "–",
          target ? yesNo(p99 <= 10 && values.length === latencyCount) : "–"
        ])
      )
    }
    latencyRow("Postgres: `log.subscribe(Latest)`", postgres, 0, false)
    latencyRow("JetStream: `log.subscribe(Latest)`", jetStream, 0, true)
    latencyRow("raw JetStream: core subscription", raw, 0, false)
    latencyRow("raw JetStream: ordered consumer", raw, 1, false)
    const jsValues = jetStream.latencies[0] ?? []
    summary.push(
      Harness.row([
        "publish to subscriber",
        "p99 ≤ 10 ms",
        `p99 ${Harness.millis(Harness.percentile(jsValues, 99))} ms, p50 ${Harness.millis(Harness.percentile(jsValues, 50))} ms ` +
          `(Postgres p99 ${Harness.millis(Harness.percentile(postgres.latencies[0] ?? [], 99))} ms; raw ordered consumer ` +
          `${Harness.millis(Harness.percentile(raw.latencies[1] ?? [], 99))} ms)`,
        yesNo(Harness.percentile(jsValues, 99) <= 10 && jsValues.length === latencyCount)
      ])
    )
    sections.push(
      [
        "\n#### Publish to subscriber\n",
        `One event an append, ${latencyRate} a second, each started on time; ${Harness.count(latencyCount)} measured ` +
          `after ${latencyWarmup} unmeasured. Append call (raw: publish) to receipt by a live subscriber in the same ` +
          `process; the ack column is the append call to its acknowledgement.\n`,
        Harness.header([
          "system",
          "received",
          "p50 ms",
          "p99 ms",
          "max ms",
          "ack p50 / p99 ms",
          "target",
          "met"
        ]),
        ...rows
      ].join("\n")
    )
  }

  yield* Harness.print(`\n### Event log backends: Postgres, JetStream, raw JetStream client\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(runLines)
  yield* Harness.print(
    `- nats-server ${natsVersion}, started by the benchmark (NatsSupervisor; file storage, 1 replica, store in ` +
      `${nats.server.storeDir}); client @nats-io/jetstream. JetStream acknowledges a message once it is written ` +
      `to its store files, which it syncs to disk periodically; Postgres once the commit is fsync'd\n` +
      `- Every event a \`job.log\` with ${dataBytes} bytes of JSON data; systems: ${systems.join(", ")}\n`
  )
  yield* Harness.print(Harness.header(["measurement", "target (JetStream)", "result", "met"]))
  for (const line of summary) yield* Harness.print(line)
  for (const section of sections) yield* Harness.print(section)
})

Harness.run(main)
